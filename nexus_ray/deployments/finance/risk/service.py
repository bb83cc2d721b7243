"""risk-assessment's logic: versioned models, the active one, online and batch scoring, job records.

Models
------
A model is trained by the Ray job :mod:`nexus_ray.jobs.train_risk` (:func:`train`) and stored
once, immutable (the database refuses UPDATE and DELETE on ``risk_models``), with its metrics
(5-fold cross-validated AUC, Brier score and log loss of the training procedure on the training
rows, the folds run as Ray tasks), its feature schema, the SHA-256 of its training rows and when
it was made. Exactly one model is active (the single row of ``risk_active``); an administrator
promotes any stored model or rolls back to the one active before, each change locked on that row
and written to the append-only ``risk_promotions`` with who did it and why. The first model ever
stored becomes active by itself (action ``first``), so a fresh platform can score once trained.

The family (``logit_forest_blend``: the mean of a calibrated logit with boosted stumps on its margin
and a random forest, through a Platt map, :mod:`nexus_ray.compute.risk`) was chosen by the measurements of
``bench/risk_model.py`` (bench/RESULTS.md): the only measured family that meets the AUC and Brier
goals, its reasons are still an exact decomposition of its own score, and it is stored as JSON
numbers, never as a pickle read back from the database. Models of the earlier family
(``calibrated_logit``) stay stored and can still be promoted and scored.

Scoring
-------
Online: :func:`score` loads the active model (cached per process, re-read at most every
``risk_model_refresh_s``) and scores one application as a batch of one. Batch: an administrator
asks for the applications of an id range; :func:`start_job` records the job and submits
:mod:`nexus_ray.jobs.score_risk`, which splits the range into chunks scored by Ray tasks
(:func:`score_chunk`). A task reads its chunk with one binary COPY parsed by numpy, scores it
(and its reasons) with matrix products, and writes the scores back with one COPY, in one
transaction with its chunk's row in ``risk_batch_chunks`` and the job's ``done`` counter: a
retried task finds its chunk written and writes nothing twice, and progress is exact.

Jobs
----
One training and one batch job run at a time: each takes the cluster's CPUs, and a second one
would only slow the first. Asking for another while one runs is a 409 (``job_in_progress``,
with the running job's id); a record whose Ray job ended without reporting (its driver killed,
the cluster restarted) is closed as failed when the next one is asked for.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import numpy as np

from nexus_ray.compute import risk
from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NotFound, ServiceUnavailable
from nexus_ray.stores import postgres

from .models import Application, JobRead, ModelRead, PromotionRead, Reason, RiskScore, ScoreRow
from .settings import RiskSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# -- models ----------------------------------------------------------------------------------------

_MODEL_COLUMNS = ("id, version, family, metrics, feature_schema, data_hash, training_rows, trained_by, created_at")


def _model_read(row: asyncpg.Record, active_id: UUID | None) -> ModelRead:
    return ModelRead.model_validate({**dict(row), "active": row["id"] == active_id})


async def _active_id(conn: asyncpg.Connection | asyncpg.Pool) -> UUID | None:
    found: UUID | None = await conn.fetchval("SELECT model_id FROM risk_active")
    return found


async def store_model(*, model: risk.Model, metrics: dict[str, Any], data_hash: str, training_rows: int,
                      trained_by: str, job_id: UUID | None = None) -> ModelRead:
    """Store a trained model (immutable); the first model ever stored becomes the active one."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            f"""INSERT INTO risk_models (id, version, family, model, metrics, feature_schema, data_hash,
                                         training_rows, trained_by)
                VALUES ($1, nextval('risk_model_versions'), $2, $3, $4, $5, $6, $7, $8)
                RETURNING {_MODEL_COLUMNS}""",
            uuid.uuid4(), model.family, model.to_bytes(), metrics, model.feature_schema(), data_hash, training_rows,
            trained_by)
        first = await conn.fetchval(
            "INSERT INTO risk_active (model_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING model_id", row["id"])
        if first is not None:
            await conn.execute("INSERT INTO risk_promotions (model_id, action, actor, reason) "
                               "VALUES ($1, 'first', $2, 'the first model stored')", row["id"], trained_by)
        if job_id is not None:
            await conn.execute(
                "UPDATE risk_jobs SET status = 'succeeded', finished_at = now(), done = total, result = $2 "
                "WHERE id = $1", job_id, {"model_id": str(row["id"]), "version": row["version"], "metrics": metrics})
        return _model_read(row, row["id"] if first is not None else await _active_id(conn))


async def list_models(*, page: PageRequest) -> Page[ModelRead]:
    p = await postgres.pool()
    rows = await p.fetch(f"SELECT {_MODEL_COLUMNS} FROM risk_models WHERE version < $1 ORDER BY version DESC "
                         "LIMIT $2", page.after_value(0, 2**31 - 1), page.fetch_limit)
    active = await _active_id(p)
    return page.of(rows, key=lambda r: (r["version"],), item=lambda r: _model_read(r, active))


async def get_model(*, model_id: UUID) -> ModelRead:
    p = await postgres.pool()
    row = await p.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM risk_models WHERE id = $1", model_id)
    if row is None:
        raise NotFound(f"model {model_id} not found")
    return _model_read(row, await _active_id(p))


async def active_model() -> ModelRead:
    p = await postgres.pool()
    row = await p.fetchrow(f"SELECT {postgres.qualified('m', _MODEL_COLUMNS)} "
                           "FROM risk_active a JOIN risk_models m ON m.id = a.model_id")
    if row is None:
        raise NotFound("no model is active yet: train one (POST /training)")
    return _model_read(row, row["id"])


async def promote(*, model_id: UUID, actor: str, reason: str = "") -> PromotionRead:
    """Make ``model_id`` the active model; 409 if it already is."""
    async with postgres.transaction() as conn:
        if await conn.fetchval("SELECT 1 FROM risk_models WHERE id = $1", model_id) is None:
            raise NotFound(f"model {model_id} not found")
        current = await conn.fetchval("SELECT model_id FROM risk_active FOR UPDATE")
        if current == model_id:
            raise Conflict(f"model {model_id} is already the active model")
        return await _activate(conn, model_id=model_id, previous=current, action="promote", actor=actor,
                               reason=reason)


async def rollback(*, actor: str, reason: str = "") -> PromotionRead:
    """Re-activate the model that was active before the current one; 409 if there was none."""
    async with postgres.transaction() as conn:
        current = await conn.fetchval("SELECT model_id FROM risk_active FOR UPDATE")
        previous = await conn.fetchval(
            "SELECT previous_id FROM risk_promotions WHERE model_id = $1 ORDER BY id DESC LIMIT 1", current)
        if current is None or previous is None:
            raise Conflict("there is no earlier active model to roll back to")
        return await _activate(conn, model_id=previous, previous=current, action="rollback", actor=actor,
                               reason=reason)


async def _activate(conn: asyncpg.Connection, *, model_id: UUID, previous: UUID | None, action: str, actor: str,
                    reason: str) -> PromotionRead:
    await conn.execute("""INSERT INTO risk_active (model_id) VALUES ($1)
                          ON CONFLICT (singleton) DO UPDATE SET model_id = $1, changed_at = now()""", model_id)
    row = await conn.fetchrow(
        "INSERT INTO risk_promotions (model_id, previous_id, action, actor, reason) VALUES ($1, $2, $3, $4, $5) "
        "RETURNING *", model_id, previous, action, actor, reason)
    _ACTIVE.forget()  # this process scores with the new model at once; others within risk_model_refresh_s
    return PromotionRead.model_validate(dict(row))


async def promotions(*, page: PageRequest) -> Page[PromotionRead]:
    p = await postgres.pool()
    rows = await p.fetch("SELECT * FROM risk_promotions WHERE id < $1 ORDER BY id DESC LIMIT $2",
                         page.after_value(0, 2**63 - 1), page.fetch_limit)
    return page.of(rows, key=lambda r: (r["id"],), item=lambda r: PromotionRead.model_validate(dict(r)))


# -- online scoring --------------------------------------------------------------------------------


@dataclass
class _Loaded:
    id: UUID
    version: int
    model: risk.Model
    read_at: float


class _ActiveModel:
    """The active model of this process, re-read at most every ``risk_model_refresh_s``."""

    def __init__(self) -> None:
        self.loaded: _Loaded | None = None
        self.lock = asyncio.Lock()

    def forget(self) -> None:
        self.loaded = None

    async def get(self) -> _Loaded:
        refresh = settings_of(RiskSettings).risk_model_refresh_s
        now = time.monotonic()
        if self.loaded is not None and now - self.loaded.read_at < refresh:
            return self.loaded
        async with self.lock:
            if self.loaded is not None and time.monotonic() - self.loaded.read_at < refresh:
                return self.loaded
            p = await postgres.pool()
            active = await _active_id(p)
            if active is None:
                # A state of the service, not an outage: 409 until a model is trained (and so active).
                raise Conflict("no risk model is active yet: one must be trained first",
                               extra={"code": "no_active_model"})
            if self.loaded is None or self.loaded.id != active:
                row = await p.fetchrow("SELECT version, model FROM risk_models WHERE id = $1", active)
                model = risk.load(row["model"])
                await asyncio.to_thread(ready, model)
                self.loaded = _Loaded(active, row["version"], model, now)
            else:
                self.loaded.read_at = now
            return self.loaded


_ACTIVE = _ActiveModel()


def ready(model: risk.Model) -> None:
    """Make ``model`` ready to score: its tables built and the forest's walk compiled (or read from numba's
    cache), by scoring one application. Run in a thread: the first score of a model in a process takes 0.7 to
    1.6 s (bench/RESULTS.md), which on the event loop would stall every finance route of the replica."""
    model.score(risk.synthetic(1, seed=0))


async def load_active_model() -> None:
    """At start, load the active model (if any) and make it ready, so that the first score does not wait.

    Nothing depends on it: without a trained model, or if the store cannot be reached yet, the first
    score loads the model itself (and answers 409 or 503 as it would have)."""
    try:
        await _ACTIVE.get()
    except Conflict:
        pass  # no model trained yet
    except Exception as e:  # a head start only: the first score tries again
        log.warning("risk model not loaded at start (%s); the first score will load it", type(e).__name__)


async def score(*, application: Application) -> RiskScore:
    """The calibrated probability of default of one application, its band and its reasons."""
    loaded = await _ACTIVE.get()
    cols = risk.columns([application.model_dump()])
    top = settings_of(RiskSettings).risk_reasons
    s = loaded.model.score(cols, top=top)
    contrib = s.contributions[0]
    reasons = [Reason(attribute=risk.ATTRIBUTES[a], text=risk.REASON_TEXTS[pid], weight=round(float(contrib[a]), 4))
               for a, pid in zip(s.reason_attributes[0], s.reasons[0], strict=True) if pid != risk.NO_REASON]
    return RiskScore(probability_of_default=round(float(s.probability[0]), 6),
                     band=risk.BAND_NAMES[int(s.band[0])], reasons=reasons,  # type: ignore[arg-type]
                     model_id=loaded.id, model_version=loaded.version)


# -- stored applications ---------------------------------------------------------------------------


async def store_applications(*, owner: str, items: Sequence[Application]) -> list[int]:
    """Store applications for batch scoring; their ids, in order."""
    cols = ", ".join(risk.ATTRIBUTES)
    args = [[getattr(a, name) for a in items] for name in risk.ATTRIBUTES]
    unnest = ", ".join(f"${i + 2}::{'text' if n in risk.CATEGORIES else 'int'}[]"
                       for i, n in enumerate(risk.ATTRIBUTES))
    async with postgres.transaction() as conn:
        rows = await conn.fetch(
            f"INSERT INTO risk_applications (owner, {cols}) SELECT $1, {cols} FROM unnest({unnest}) "
            "WITH ORDINALITY AS t(" + cols + ", ord) ORDER BY ord RETURNING id", owner, *args)
    return [r["id"] for r in rows]


# -- jobs: records, submission, progress -----------------------------------------------------------

_JOB_COLUMNS = ("id, kind, submission_id, requested_by, params, status, total, done, result, error, created_at, "
                "finished_at")


async def start_job(*, kind: str, params: dict[str, Any], requested_by: str,
                    submit: Callable[[str, list[str], str], str] | None = None,
                    running: Callable[[str], bool] | None = None) -> JobRead:
    """Record a training or batch-scoring job and submit its Ray job (503 if Ray does not take it).

    ``submit`` and ``running`` stand in for Ray's job API (:func:`_still_running`) where there is none.
    """
    from nexus_ray.runtime import jobs

    job_id = uuid.uuid4()
    submission_id = f"risk-{kind}-{job_id}"
    module = {"train": "train_risk", "score": "score_risk"}[kind]
    if kind == "score":
        active = await _active_id(await postgres.pool())
        if active is None:
            raise Conflict("no model is active: train one before scoring a batch")
        # The words of the codes its scores are written with: the job's own, whatever a later version says.
        params = {**params, "model_id": str(active), "reason_texts": risk.REASON_TEXTS,
                  "bands": list(risk.BAND_NAMES)}
    async with postgres.transaction() as conn:
        # One unfinished job of each kind at a time (each one takes the cluster's CPUs): a second
        # request while one runs is a 409 naming it. A record whose Ray job is gone is closed first.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"risk-jobs:{kind}")
        unfinished = await conn.fetchrow(
            "SELECT id, submission_id FROM risk_jobs WHERE kind = $1 AND status IN ('submitted', 'running') "
            "ORDER BY created_at DESC LIMIT 1", kind)
        if unfinished is not None:
            if await asyncio.to_thread(running or _still_running, unfinished["submission_id"]):
                raise Conflict(f"a {kind} job is already running: {unfinished['id']}",
                               extra={"code": "job_in_progress", "job_id": str(unfinished["id"])})
            await conn.execute(
                "UPDATE risk_jobs SET status = 'failed', error = 'lost: its Ray job ended without reporting', "
                "finished_at = now() WHERE kind = $1 AND status IN ('submitted', 'running')", kind)
        await conn.execute("INSERT INTO risk_jobs (id, kind, submission_id, requested_by, params) "
                           "VALUES ($1, $2, $3, $4, $5)", job_id, kind, submission_id, requested_by, params)
    args = ["--job-id", str(job_id)]
    try:
        await asyncio.to_thread(submit or (lambda m, a, s: jobs.submit(m, a, submission_id=s)), module, args,
                                submission_id)
    except Exception as exc:
        log.warning("risk %s job %s could not be submitted: %s", kind, job_id, type(exc).__name__)
        await finish_job(job_id=job_id, error=f"not submitted: {type(exc).__name__}")
        raise ServiceUnavailable("the Ray cluster did not take the job; retry later") from None
    return await get_job(job_id=job_id, with_ray=False)


async def get_job(*, job_id: UUID, with_ray: bool = True) -> JobRead:
    p = await postgres.pool()
    row = await p.fetchrow(f"SELECT {_JOB_COLUMNS} FROM risk_jobs WHERE id = $1", job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    out = JobRead.model_validate(dict(row))
    if with_ray:
        out.ray = await asyncio.to_thread(_ray_view, row["submission_id"])
    return out


def _still_running(submission_id: str) -> bool:
    """Whether the Ray job ``submission_id`` runs (or waits to); False when it ended or Ray does not know it.

    Ray's job API unreachable is a 503: whether the job still runs cannot be told.
    """
    from nexus_ray.runtime import jobs

    try:
        jobs.client()
    except Exception:
        raise ServiceUnavailable("the Ray cluster's job API is unreachable; retry later") from None
    try:
        return not jobs.info(submission_id).terminal
    except Exception:
        return False  # not a job of this cluster (a restarted cluster, a job never submitted)


def _ray_view(submission_id: str) -> dict[str, Any] | None:
    from nexus_ray.runtime import jobs

    try:
        info = jobs.info(submission_id)
        return {"status": info.status, "message": info.message, **jobs.progress(submission_id)}
    except Exception:  # Ray not reachable from here, or the job is gone: the record still says how far it got
        return None


async def claim_job(*, job_id: UUID, kind: str) -> tuple[dict[str, Any], str]:
    """For the job itself: mark its record running; its params and who asked for it."""
    p = await postgres.pool()
    row = await p.fetchrow("UPDATE risk_jobs SET status = 'running' WHERE id = $1 AND kind = $2 "
                           "AND status IN ('submitted', 'running') RETURNING params, requested_by", job_id, kind)
    if row is None:
        raise NotFound(f"no {kind} job {job_id} waiting to run")
    return dict(row["params"]), str(row["requested_by"])


async def finish_job(*, job_id: UUID, result: dict[str, Any] | None = None, error: str | None = None) -> None:
    p = await postgres.pool()
    await p.execute("UPDATE risk_jobs SET status = $2, result = $3, error = $4, finished_at = now() WHERE id = $1",
                    job_id, "failed" if error else "succeeded", result, error)


async def batch_scores(*, job_id: UUID, page: PageRequest) -> Page[ScoreRow]:
    """A batch job's scores, with the band and reasons in words (through the dictionary the job wrote with)."""
    p = await postgres.pool()
    params = await p.fetchval("SELECT params FROM risk_jobs WHERE id = $1 AND kind = 'score'", job_id)
    if params is None:
        raise NotFound(f"batch job {job_id} not found")
    texts, bands = params["reason_texts"], params["bands"]
    rows = await p.fetch("SELECT application_id, probability, band, reasons FROM risk_scores WHERE job_id = $1 "
                         "AND application_id > $2 ORDER BY application_id LIMIT $3",
                         job_id, page.after_value(0, 0), page.fetch_limit)
    return page.of(rows, key=lambda r: (r["application_id"],), item=lambda r: ScoreRow(
        application_id=r["application_id"], probability_of_default=r["probability"], band=bands[r["band"]],
        reasons=[texts[c] for c in r["reasons"] if c != risk.NO_REASON]))


# -- training (run by nexus_ray.jobs.train_risk) ----------------------------------------------------

FOLDS = 5


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold of a training run: fit on ``train`` rows, predict ``test`` rows."""

    cols: dict[str, np.ndarray]
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    seed: int
    c_grid: tuple[float, ...]


def fit_fold(fold: Fold) -> np.ndarray:
    """Out-of-fold probabilities of one fold (a Ray task in the job)."""
    model = risk.fit(risk.take(fold.cols, fold.train), fold.y[fold.train], seed=fold.seed, c_grid=fold.c_grid)
    return model.probability(risk.take(fold.cols, fold.test))


def training_rows(*, sample: int | None, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The German credit rows a run trains on: all, or a seeded sample of ``sample`` rows."""
    apps, y = risk.german_credit()
    cols = risk.columns(apps)
    if sample is not None and sample < len(y):
        rows = np.sort(np.random.default_rng(seed).choice(len(y), size=sample, replace=False))
        cols, y = risk.take(cols, rows), y[rows]
    return cols, y


async def train(*, sample: int | None = None, seed: int = 0, trained_by: str, job_id: UUID | None = None,
                mapper: Callable[[Callable[[Fold], np.ndarray], Iterable[Fold]], list[np.ndarray]] | None = None,
                c_grid: tuple[float, ...] = risk.C_GRID) -> ModelRead:
    """Fit the model (the logit with stumps, blended with the forest), measure it by 5-fold CV (each fold through
    ``mapper``), store it.

    ``c_grid``: the L2 strengths the inner cross-validation chooses from (tests use one, for speed).
    """
    from sklearn.model_selection import StratifiedKFold

    cols, y = training_rows(sample=sample, seed=seed)
    splits = StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    folds = [Fold(cols, y, tr, te, seed, c_grid) for tr, te in splits]
    run = mapper or (lambda fn, items: [fn(i) for i in items])
    oof = np.empty(len(y))
    for fold, p in zip(folds, await asyncio.to_thread(run, fit_fold, folds), strict=True):
        oof[fold.test] = p
    model = await asyncio.to_thread(risk.fit, cols, y, seed=seed, c_grid=c_grid)
    metrics = {"cv": {"folds": FOLDS, **risk.metrics(y, oof)},
               "in_sample": risk.metrics(y, model.probability(cols)), "hyper": model.hyper, "seed": seed,
               "c_grid": list(c_grid)}
    return await store_model(model=model, metrics=metrics, data_hash=risk.data_hash(cols, y),
                             training_rows=len(y), trained_by=trained_by, job_id=job_id)


# -- batch scoring (run by nexus_ray.jobs.score_risk) -----------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Applications ``first_id..last_id`` of a batch job, scored by one Ray task."""

    job_id: str
    model_id: str
    number: int
    first_id: int
    last_id: int


def chunks(*, job_id: UUID, model_id: UUID, first_id: int, last_id: int, size: int) -> list[Chunk]:
    return [Chunk(str(job_id), str(model_id), i, lo, min(lo + size - 1, last_id))
            for i, lo in enumerate(range(first_id, last_id + 1, size))]


# The chunk's rows as one binary COPY of fixed-width integers, read straight into a numpy record array.
# Categories travel as their index in the data dictionary (array_position - 1), so nothing is parsed.
_WIDTH = {"id": (">i8", 8), "credit_amount": (">i4", 4)}
_READ_FIELDS = ("id", *risk.ATTRIBUTES)
_ROW = np.dtype([("n", ">i2")] + [p for f in _READ_FIELDS for p in (
    (f"{f}_len", ">i4"), (f, _WIDTH.get(f, (">i2", 2))[0]))])
_COPY_HEADER = 19  # b"PGCOPY\n\xff\r\n\0" + flags (4) + header extension length (4)


def _read_query() -> str:
    parts = ["id"]
    vocab = 3  # $1 and $2 are the id range; each categorical attribute's values follow
    for name in risk.ATTRIBUTES:
        if name in risk.CATEGORIES:
            parts.append(f"(array_position(${vocab}::text[], {name}) - 1)::int2")
            vocab += 1
        else:
            parts.append(f"{name}::int4" if name == "credit_amount" else f"{name}::int2")
    return f"SELECT {', '.join(parts)} FROM risk_applications WHERE id BETWEEN $1 AND $2 ORDER BY id"


_READ_QUERY = _read_query()
_VOCABS = [list(risk.VALUES[n]) for n in risk.ATTRIBUTES if n in risk.CATEGORIES]


async def read_chunk(conn: asyncpg.Connection, first_id: int, last_id: int
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ids and columns of the applications ``first_id..last_id``."""
    parts: list[bytes] = []

    async def sink(data: bytes) -> None:
        parts.append(data)

    await conn.copy_from_query(_READ_QUERY, first_id, last_id, *_VOCABS, output=sink, format="binary")
    raw = b"".join(parts)
    n = (len(raw) - _COPY_HEADER - 2) // _ROW.itemsize
    if n < 0 or len(raw) != _COPY_HEADER + n * _ROW.itemsize + 2:
        raise ValueError("applications with values outside the data dictionary in this chunk")
    rows = np.frombuffer(raw, dtype=_ROW, count=n, offset=_COPY_HEADER)
    for f in _READ_FIELDS:
        if n and not (rows[f"{f}_len"] == _WIDTH.get(f, (">i2", 2))[1]).all():
            raise ValueError(f"applications with a {f} outside the data dictionary in this chunk")
    cols = {name: rows[name].astype(np.int16 if name in risk.CATEGORIES else np.float64)
            for name in risk.ATTRIBUTES}
    return rows["id"].astype(np.int64), cols


_MODELS: dict[str, risk.Model] = {}  # per worker process; models are immutable, so never stale


async def _model(conn: asyncpg.Connection, model_id: str) -> risk.Model:
    m = _MODELS.get(model_id)
    if m is None:
        raw = await conn.fetchval("SELECT model FROM risk_models WHERE id = $1", UUID(model_id))
        if raw is None:
            raise NotFound(f"model {model_id} not found")
        m = _MODELS[model_id] = risk.load(raw)
    return m


async def score_chunk_async(chunk: Chunk, *, top: int = 4) -> int:
    """Score one chunk and write its scores, once; the number of applications it holds."""
    conn = await asyncpg.connect(get_settings().postgres_url)
    try:
        job_id = UUID(chunk.job_id)
        written = await conn.fetchval("SELECT rows FROM risk_batch_chunks WHERE job_id = $1 AND chunk = $2",
                                      job_id, chunk.number)
        if written is not None:
            return int(written)
        model = await _model(conn, chunk.model_id)
        ids, cols = await read_chunk(conn, chunk.first_id, chunk.last_id)
        s = model.score(cols, top=top) if len(ids) else None
        model_id = UUID(chunk.model_id)
        async with conn.transaction():
            claimed = await conn.fetchval(
                "INSERT INTO risk_batch_chunks (job_id, chunk, rows) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING rows", job_id, chunk.number, len(ids))
            if claimed is None:  # another attempt of this task wrote it meanwhile
                return len(ids)
            if s is not None:
                await conn.copy_to_table(
                    "risk_scores", columns=("job_id", "application_id", "model_id", "probability", "band", "reasons"),
                    source=io.BytesIO(_score_rows(job_id, model_id, ids, s)), format="binary")
            await conn.execute("UPDATE risk_jobs SET done = done + $2 WHERE id = $1", job_id, len(ids))
        return len(ids)
    finally:
        await conn.close()


def _score_rows(job_id: UUID, model_id: UUID, ids: np.ndarray, s: risk.Scores) -> bytes:
    """The chunk's scores as one binary COPY, built by numpy: every field is fixed width (the band and the
    reasons are codes, read through the job's own dictionary), so no Python object is made per row."""
    top = s.reasons.shape[1]
    row = np.dtype([("n", ">i2"), ("job_len", ">i4"), ("job", "V16"), ("app_len", ">i4"), ("app", ">i8"),
                    ("model_len", ">i4"), ("model", "V16"), ("p_len", ">i4"), ("p", ">f8"), ("band_len", ">i4"),
                    ("band", ">i2"), ("reasons_len", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("elem", ">u4"),
                    ("dim", ">i4"), ("lbound", ">i4"), ("items", [("len", ">i4"), ("code", ">i2")], (top,))])
    out = np.zeros(len(ids), dtype=row)
    out["n"] = 6
    out["job_len"], out["job"] = 16, np.frombuffer(job_id.bytes, dtype="V16")[0]
    out["app_len"], out["app"] = 8, ids
    out["model_len"], out["model"] = 16, np.frombuffer(model_id.bytes, dtype="V16")[0]
    out["p_len"], out["p"] = 8, s.probability
    out["band_len"], out["band"] = 2, s.band
    out["reasons_len"] = 20 + 6 * top
    out["ndim"], out["flags"], out["elem"], out["dim"], out["lbound"] = 1, 0, 21, top, 1  # 21: int2
    out["items"]["len"] = 2
    out["items"]["code"] = s.reasons
    return _COPY_SIGNATURE + out.tobytes() + b"\xff\xff"


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header extension length


def score_chunk(chunk: Chunk) -> int:
    """:func:`score_chunk_async` for a Ray task (a plain function: its own event loop and connection)."""
    return asyncio.run(score_chunk_async(chunk))


async def batch_bounds(*, first_id: int, last_id: int | None) -> tuple[int, int, int]:
    """(first id, last id, count) of the stored applications in the range."""
    p = await postgres.pool()
    row = await p.fetchrow("SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM risk_applications "
                           "WHERE id >= $1 AND ($2::bigint IS NULL OR id <= $2)", first_id, last_id)
    return int(row["lo"] or first_id), int(row["hi"] or first_id - 1), int(row["n"])


async def set_total(*, job_id: UUID, total: int) -> None:
    p = await postgres.pool()
    await p.execute("UPDATE risk_jobs SET total = $2 WHERE id = $1", job_id, total)


async def job_done(*, job_id: UUID) -> int:
    p = await postgres.pool()
    return int(await p.fetchval("SELECT done FROM risk_jobs WHERE id = $1", job_id) or 0)


def applications_of(cols: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Column arrays (as :func:`nexus_ray.compute.risk.synthetic` makes) as application dicts."""
    n = len(next(iter(cols.values())))
    return [{name: (risk.VALUES[name][int(cols[name][i])] if name in risk.CATEGORIES else int(cols[name][i]))
             for name in risk.ATTRIBUTES} for i in range(n)]
