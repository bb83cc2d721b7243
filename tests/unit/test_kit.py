"""The service kit's pure parts: scopes from the catalog, pages and cursors, placement in the Serve config."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from nexus_ray.catalog import SERVICES, Placement
from nexus_ray.deployments.kit.pages import PageRequest, decode_cursor, encode_cursor
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.exceptions import ValidationFailed
from nexus_ray.runtime import serve_config


def test_scopes_come_from_the_catalog():
    s = scopes_of("puabo-nuki-order-processor")
    assert s.all == ("commerce:order-processor:read", "commerce:order-processor:write",
                     "commerce:order-processor:admin")
    assert len({scopes_of(x.name).read for x in SERVICES}) == 44
    with pytest.raises(KeyError):
        scopes_of("no-such-service")


def test_cursor_round_trip_and_refusal():
    key = [1712345678.25, "abc"]
    assert decode_cursor(encode_cursor(key)) == key
    for bad in ("%%%", "bm90IGpzb24", encode_cursor([])[:-1] + "x", "W10"):
        with pytest.raises(ValidationFailed) as err:
            decode_cursor(bad)
        assert err.value.extra["errors"][0]["field"] == "cursor"


def test_a_page_has_a_cursor_only_when_more_follow():
    rows = [{"id": i} for i in range(6)]
    page = PageRequest(limit=5).of(rows, key=lambda r: (r["id"],))
    assert [r["id"] for r in page.items] == [0, 1, 2, 3, 4] and decode_cursor(page.next_cursor) == [4]
    last = PageRequest(limit=5, cursor=encode_cursor([4])).of(rows[5:], key=lambda r: (r["id"],))
    assert [r["id"] for r in last.items] == [5] and last.next_cursor is None
    assert PageRequest(limit=3).of([], key=lambda r: (r,)).model_dump() == {"items": [], "next_cursor": None}


def test_a_dedicated_service_gets_an_application_per_version():
    config = serve_config.build(dedicated_services={"auth-service-v2": Placement(min_replicas=2, max_replicas=2,
                                                                                 num_cpus=1)})
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert apps["auth"]["args"] == {"namespace": "auth", "dedicated": ["auth-service-v2"]}
    for version in ("v1", "v2"):
        app = apps[f"auth-oauth-{version}"]
        assert app["route_prefix"] == f"/auth/{version}/oauth"
        assert app["args"] == {"namespace": "auth", "service": "auth-service-v2", "version": version}
        assert app["deployments"][0]["num_replicas"] == 2
        assert app["deployments"][0]["ray_actor_options"] == {"num_cpus": 1}


def test_the_checked_in_config_ignores_this_machines_placement(monkeypatch):
    from nexus_ray.config import get_settings

    monkeypatch.setenv("NEXUS_DEDICATED_SERVICES", '{"ledger-mgr": {"min_replicas": 2}}')
    get_settings.cache_clear()
    try:
        assert "commerce-ledger-v1" in {a["name"] for a in serve_config.build()["applications"]}
        assert "commerce-ledger-v1" not in yaml.safe_load(serve_config.render())["applications"].__repr__()
    finally:
        monkeypatch.delenv("NEXUS_DEDICATED_SERVICES")
        get_settings.cache_clear()


def test_unknown_dedicated_service_is_refused(monkeypatch):
    from nexus_ray.config import get_settings

    monkeypatch.setenv("NEXUS_DEDICATED_SERVICES", '{"nope": {"min_replicas": 2}}')
    get_settings.cache_clear()
    try:
        with pytest.raises(KeyError):
            serve_config.build()
    finally:
        monkeypatch.delenv("NEXUS_DEDICATED_SERVICES")
        get_settings.cache_clear()


def test_finer_actions_and_their_refusal():
    s = scopes_of("key-service")
    assert s.action("decrypt") == "specialized:keys:decrypt"
    for bad in ("", "a:b", "x y"):
        with pytest.raises(ValueError):
            s.action(bad)


def test_an_empty_cursor_is_the_first_page():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from nexus_ray.deployments.kit.pages import page_params

    app = FastAPI()

    @app.get("/things")
    def things(page: PageRequest = page_params()) -> dict:
        return {"cursor": page.cursor, "after": page.after}

    assert TestClient(app).get("/things", params={"cursor": ""}).json() == {"cursor": None, "after": None}
