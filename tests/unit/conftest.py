"""Unit tests run without Ray or stores: starting either here is a mistake, so it raises."""

import pytest


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch):
    import ray

    from nexus_ray.runtime import cluster, embedded

    def refuse(*_a, **_k):
        raise RuntimeError("unit tests must not start Ray or a store: move the test to tests/integration or e2e")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(cluster, "start_head", refuse)
    for name in ("start", "start_redis"):
        if hasattr(embedded, name):
            monkeypatch.setattr(embedded, name, refuse)
