"""A directory that a local Ray head puts first on its processes' ``PYTHONPATH``.

It holds one package, ``pandas``, whose import fails: see ``WITHOUT_PANDAS`` in
:mod:`nexus_ray.runtime.cluster` for why, and the ``ray_local_pandas`` setting to turn it off.
"""
