"""Compute: plain functions over plain data, run as Ray tasks at the call site.

The functions (``geo``; ``loans`` and ``musicchain`` for finance; ``pdf`` for invoices and shipping
labels; later routing, dispatch, recommend, risk) import no Ray and are unit-tested as they are;
:mod:`nexus_ray.compute.tasks` runs them on the cluster with the resources a call site asks for
(``num_gpus`` included).
"""

from nexus_ray.compute.tasks import amap_tasks, map_tasks, remote

__all__ = ["amap_tasks", "map_tasks", "remote"]
