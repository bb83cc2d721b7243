"""The 44 services of the platform: the single source of truth.

The Serve config, the route table, the service directory of backend-api and the
tests that sweep every service are all derived from :data:`SERVICES`. A service's
routes live in ``nexus_ray.deployments.<namespace>.<module>`` (``module`` below);
where it runs (inside its namespace ingress, or on its own) is placement, not code.

Tiers follow the platform's service levels: tier 1 = 99.99 %, tier 2 = 99.95 %,
tier 3 = 99.9 % monthly availability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Store = Literal["postgres", "documents", "redis", "kafka"]

NAMESPACES: tuple[str, ...] = (
    "auth",
    "content",
    "ai",
    "commerce",
    "finance",
    "logistics",
    "platform",
    "entertainment",
    "specialized",
)

API_VERSIONS: tuple[str, ...] = ("v1", "v2")


@dataclass(frozen=True)
class Placement:
    """Where a namespace's ingress (or a dedicated service) runs: replicas and the resources of each."""

    min_replicas: int = 1
    max_replicas: int = 1
    num_cpus: float = 0.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class Service:
    """One platform service as the catalog knows it."""

    name: str
    namespace: str
    port: int
    slug: str
    tier: int
    title: str
    stores: tuple[Store, ...] = ()
    versions: tuple[str, ...] = ("v1",)
    module: str = field(default="")

    @property
    def package(self) -> str:
        """Import path of the module that holds the service's routes."""
        return f"nexus_ray.deployments.{self.namespace}.{self.module or self.slug.replace('-', '_')}"

    def path(self, version: str = "v1") -> str:
        """Public path prefix of the service, e.g. ``/commerce/v1/order-processor``."""
        return f"/{self.namespace}/{version}/{self.slug}"


_PG: tuple[Store, ...] = ("postgres",)
_PG_R: tuple[Store, ...] = ("postgres", "redis")
_PG_K: tuple[Store, ...] = ("postgres", "kafka")
_DOC: tuple[Store, ...] = ("documents",)


def _s(
    name: str, namespace: str, port: int, slug: str, tier: int, title: str,
    stores: tuple[Store, ...] = _PG, versions: tuple[str, ...] = ("v1",), module: str = "",
) -> Service:
    return Service(name, namespace, port, slug, tier, title, tuple(stores), tuple(versions), module)


SERVICES: tuple[Service, ...] = (
    # auth
    _s("auth-service", "auth", 3021, "auth", 1, "Legacy login, sessions and lockout", _PG_R),
    _s("auth-service-v2", "auth", 3034, "oauth", 1, "OAuth 2.0 / OpenID Connect provider", _PG_R, ("v1", "v2")),
    _s("user-auth", "auth", 3024, "users", 1, "Users, roles, API keys, personal data", _PG),
    # content
    _s("content-management", "content", 3022, "content", 2, "Content items, versions, publishing, search", _PG_K),
    _s("streaming-service-v2", "content", 3028, "streaming", 1, "VOD playlists and live streams", ("postgres", "redis"), ("v1", "v2")),
    _s("puaboverse-v2", "content", 3027, "puaboverse", 3, "Virtual worlds, rooms and presence", ("postgres", "redis"), ("v1", "v2")),
    _s("creator-hub-v2", "content", 3023, "creator-hub", 2, "Creator channels, analytics, payouts", _PG_K, ("v1", "v2")),
    _s("boom-boom-room-live", "content", 3029, "live-rooms", 3, "Ticketed live shows, tips, room chat", _PG_R),
    # ai
    _s("kei-ai", "ai", 3025, "assistant", 2, "Conversational assistant with retrieval", ("postgres", "documents")),
    _s("nexus-cos-studio-ai", "ai", 3026, "studio", 3, "Auto-tagging, summaries, near-duplicates", _DOC),
    _s("puaboai-sdk", "ai", 3003, "developer-apps", 2, "Third-party apps, quotas, usage metering", _PG_R),
    _s("ai-service", "ai", 3001, "embeddings", 2, "Embeddings and vector collections", _PG),
    _s("recommendation-engine", "ai", 3044, "recommendations", 2, "Trained top-K recommendations", ("postgres", "redis")),
    # commerce
    _s("puabo-nuki-order-processor", "commerce", 3018, "order-processor", 1, "Order saga with compensation", _PG_K,
       module="orders"),
    _s("puabo-nuki-inventory-mgr", "commerce", 3017, "inventory", 1, "Stock, reservations, restock", _PG_K),
    _s("puabo-nuki-product-catalog", "commerce", 3019, "catalog", 1, "Products, variants, faceted search", _DOC),
    _s("puabo-nuki-shipping-service", "commerce", 3020, "shipping", 2, "Rates, shipments, labels, tracking", _PG_K),
    _s("billing-service", "commerce", 3035, "billing", 1, "Payment intents, captures, refunds, webhooks", _PG_K),
    _s("invoice-gen", "commerce", 3032, "invoices", 2, "Gap-free invoices, PDFs, credit notes", _PG),
    _s("ledger-mgr", "commerce", 3033, "ledger", 1, "Double-entry ledger, holds, reconciliation", _PG),
    # finance
    _s("puabo-blac-loan-processor", "finance", 3011, "loans", 1, "Loan origination and servicing", _PG_K),
    _s("puabo-blac-risk-assessment", "finance", 3012, "risk", 1, "Credit-risk scoring", _PG),
    _s("token-mgr", "finance", 3031, "tokens", 2, "Token supply, mint, burn, vesting", _PG),
    _s("puabomusicchain", "finance", 3004, "music-chain", 3, "Rights hash chain and royalty splits", _PG),
    # logistics
    _s("puabo-nexus-ai-dispatch", "logistics", 3013, "dispatch", 1, "Job-to-driver assignment loop", _PG_K),
    _s("puabo-nexus-fleet-manager", "logistics", 3015, "fleet", 1, "Fleets, vehicles, telemetry, geofences", _PG_R),
    _s("puabo-nexus-driver-app-backend", "logistics", 3014, "drivers", 1, "Drivers, shifts, offers, earnings", _PG_R),
    _s("puabo-nexus-route-optimizer", "logistics", 3016, "routes", 2, "Vehicle routing with time windows", _PG),
    _s("puabo-nexus", "logistics", 3050, "deliveries", 1, "Delivery lifecycle and proof of delivery", _PG_K),
    # platform
    _s("backend-api", "platform", 3000, "gateway", 1, "Service directory, notices, aggregated views, OpenAPI index", ("redis",)),
    _s("session-mgr", "platform", 3030, "sessions", 1, "Sessions held by SessionActors", _PG_R),
    _s("scheduler", "platform", 3036, "scheduler", 2, "Cron and one-off schedules, run history", _PG),
    _s("notification-service", "platform", 3042, "notifications", 2, "Email, push and SMS with retries", _PG_K),
    _s("chat-service", "platform", 3043, "chat", 2, "Real-time chat rooms and history", ("documents", "redis")),
    # entertainment
    _s("v-caster-pro", "entertainment", 3037, "v-caster", 3, "Broadcast channels and EPG", _PG),
    _s("v-prompter-pro", "entertainment", 3038, "v-prompter", 3, "Teleprompter scripts and live prompting", ("postgres", "redis")),
    _s("v-screen-pro", "entertainment", 3039, "v-screen", 3, "Screen-sharing signaling", _PG_R),
    _s("vscreen-hollywood", "entertainment", 3040, "hollywood", 3, "Production management", _PG),
    _s("glitch", "entertainment", 3007, "glitch", 3, "Games, matches, leaderboards", _PG_R),
    # specialized
    _s("puabo-dsp-upload-mgr", "specialized", 3008, "uploads", 2, "Resumable chunked uploads", _PG),
    _s("puabo-dsp-metadata-mgr", "specialized", 3009, "metadata", 2, "Release metadata, ISRC/UPC", _PG),
    _s("puabo-dsp-streaming-api", "specialized", 3010, "partner-streaming", 2, "Partner play events and royalties", _PG_K),
    _s("key-service", "specialized", 3002, "keys", 1, "Signing keys, JWKS, envelope encryption", _PG),
    _s("pv-keys", "specialized", 3005, "pv-keys", 3, "Ed25519 access keys for virtual-world assets", _PG),
)

#: Resources and replicas of each namespace ingress in the default Serve config. The front
#: door (platform: directory, notices, sessions) and identity (auth: every login and token)
#: take the most traffic, and one Python process per namespace caps a namespace at about
#: one core: they get two replicas (bench/RESULTS.md: 0.78 of a bare app with two, 0.48 with one).
PLACEMENT: dict[str, Placement] = {ns: Placement() for ns in NAMESPACES}
PLACEMENT["platform"] = Placement(min_replicas=2, max_replicas=2)
PLACEMENT["auth"] = Placement(min_replicas=2, max_replicas=2)

#: Services that run in a deployment of their own instead of their namespace's ingress
#: (nexus_ray.runtime.placement; the setting ``dedicated_services`` adds to these). None by
#: default: on a small machine every extra deployment is a process and its idle cost.
DEDICATED: dict[str, Placement] = {}

_BY_NAME = {s.name: s for s in SERVICES}


def service(name: str) -> Service:
    """The catalog entry of the service ``name``; KeyError if there is none."""
    return _BY_NAME[name]


def in_namespace(namespace: str) -> tuple[Service, ...]:
    """The services hosted by the ingress of ``namespace``, in catalog order."""
    if namespace not in NAMESPACES:
        raise KeyError(namespace)
    return tuple(s for s in SERVICES if s.namespace == namespace)


def stores_of(namespace: str) -> frozenset[Store]:
    """Every store any service of ``namespace`` uses (what its ingress connects to)."""
    return frozenset(st for s in in_namespace(namespace) for st in s.stores)


def _check() -> None:
    assert len(SERVICES) == 44, len(SERVICES)
    assert len(_BY_NAME) == 44, "service names must be unique"
    assert len({s.port for s in SERVICES}) == 44, "legacy ports must be unique"
    for ns in NAMESPACES:
        slugs = [s.slug for s in in_namespace(ns)]
        assert len(slugs) == len(set(slugs)), f"slugs repeat in {ns}"
    assert all(s.namespace in NAMESPACES for s in SERVICES)


_check()
