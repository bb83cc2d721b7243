"""The shipped Grafana dashboard queries the metrics the edge actually records."""

import json
from pathlib import Path

from nexus_ray.deployments.kit import loops
from nexus_ray.edge import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "nexus-services.json"


def test_dashboard_queries_existing_metrics_and_tags():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs
    names = {f"ray_{metrics.REQUESTS._name}", f"ray_{metrics.LATENCY._name}_bucket", f"ray_{loops.PASSES._name}"}
    assert all(any(n in e for n in names) for e in exprs)
    for tag in ("namespace", "service", "route", "status"):
        assert tag in metrics._TAGS
