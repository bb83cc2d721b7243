"""Stands in for pandas in a local Ray head's processes (``WITHOUT_PANDAS`` in nexus_ray.runtime.cluster).

Ray Serve imports pandas where it is installed, only to encode DataFrames as JSON; nothing of the
platform uses it, and each Serve process would carry it. Its import fails here, as if it were
not installed, which every optional user of pandas (Serve, scikit-learn) expects.
"""

raise ImportError(
    "pandas is left out of this local Ray head's processes (nexus_ray/runtime/cluster.py, WITHOUT_PANDAS): "
    "start the head with NEXUS_RAY_LOCAL_PANDAS=true to have it"
)
