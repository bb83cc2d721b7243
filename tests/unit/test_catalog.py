"""The catalog is complete and the checked-in Serve config is exactly what it generates."""

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from nexus_ray import catalog
from nexus_ray.runtime import serve_config

# The project's copy of the shared service list: the tests read nothing outside the repository.
SERVICES_MD = Path(__file__).resolve().parents[1] / "data" / "services.md"


def test_44_services_in_9_namespaces():
    assert len(catalog.SERVICES) == 44
    assert len(catalog.NAMESPACES) == 9
    assert {s.namespace for s in catalog.SERVICES} == set(catalog.NAMESPACES)
    assert sum(len(catalog.in_namespace(ns)) for ns in catalog.NAMESPACES) == 44


def test_every_service_of_services_md_is_catalogued():
    text = SERVICES_MD.read_text()
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and line[2:3] != "-"]
    listed = {name.strip(): int(port) for name, port in rows if port.strip().isdigit()}
    assert listed == {s.name: s.port for s in catalog.SERVICES}


def test_paths_follow_namespace_version_service():
    s = catalog.service("puabo-nuki-order-processor")
    assert s.path() == "/commerce/v1/order-processor"
    assert s.package == "nexus_ray.deployments.commerce.orders"  # the catalog names its module
    ledger = catalog.service("ledger-mgr")
    assert ledger.path("v1") == "/commerce/v1/ledger"
    assert ledger.package == "nexus_ray.deployments.commerce.ledger"  # by default, the slug's


def test_checked_in_serve_config_equals_generated():
    assert serve_config.CONFIG_PATH.read_text() == serve_config.render()


def test_serve_config_validates_with_serves_own_schema():
    config = yaml.safe_load(serve_config.CONFIG_PATH.read_text())
    parsed = ServeDeploySchema.model_validate(config)
    assert [a.name for a in parsed.applications] == list(catalog.NAMESPACES)
    assert {a.route_prefix for a in parsed.applications} == {f"/{ns}" for ns in catalog.NAMESPACES}
