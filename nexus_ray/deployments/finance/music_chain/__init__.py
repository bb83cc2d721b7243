"""puabomusicchain: the rights registry as an append-only hash chain, Merkle proofs, verification, royalties.

Routes in :mod:`.views`; the chain in PostgreSQL, roots, proofs, verification and royalty
runs on the ledger in :mod:`.service`, over the pure functions of
:mod:`nexus_ray.compute.musicchain`. Emits ``music.record.appended``,
``music.root.published`` and ``music.royalty.run.posted``, in the transaction of the change.
"""

from __future__ import annotations

from .views import router

__all__ = ["router"]
