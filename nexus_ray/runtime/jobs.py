"""Ray jobs through Ray's job-submission API: submit, status, logs, stop -- the one way to start one.

Used by the scheduler (runs of cron schedules), by services that start batch work (risk model
training, batch scoring) and by the CLI. The entry point is a module of :mod:`nexus_ray.jobs`,
run with the cluster's own Python (``python -m nexus_ray.jobs.<name>``), with the platform's
``NEXUS_*`` settings passed through the runtime environment so the job reaches the same stores.

The dashboard address is the setting ``dashboard_url`` when set, else this node's dashboard
when this process is part of a Ray cluster (a Serve replica, a job), else the local head's.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from ..config import get_settings
from .cluster import dashboard_headers

TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED})


@dataclass(frozen=True)
class JobInfo:
    submission_id: str
    status: str
    message: str
    entrypoint: str
    metadata: dict[str, str]
    start_time_ms: int | None
    end_time_ms: int | None

    @property
    def terminal(self) -> bool:
        return self.status in {s.value for s in TERMINAL}

    @property
    def duration_s(self) -> float | None:
        if self.start_time_ms is None or self.end_time_ms is None:
            return None
        return (self.end_time_ms - self.start_time_ms) / 1000.0


def dashboard_url() -> str:
    """Where Ray's job-submission API answers (see the module docstring)."""
    s = get_settings()
    configured = getattr(s, "dashboard_url", "") or os.environ.get("NEXUS_DASHBOARD_URL", "")
    if configured:
        return configured.rstrip("/")
    try:
        import ray._private.worker as worker

        node = worker._global_node
        if node is not None and node.webui_url:
            url = str(node.webui_url)
            return url if url.startswith("http") else f"http://{url}"
    except Exception:  # pragma: no cover - not in a Ray process
        pass
    return f"http://127.0.0.1:{s.dashboard_port}"


@lru_cache(maxsize=4)
def _client(url: str) -> JobSubmissionClient:
    return JobSubmissionClient(url, headers=dashboard_headers())


def client() -> JobSubmissionClient:
    return _client(dashboard_url())


def _settings_env() -> dict[str, str]:
    """The ``NEXUS_*`` variables of this process, so a job reaches the same stores and settings."""
    return {k: v for k, v in os.environ.items() if k.startswith("NEXUS_")}


def entrypoint(module: str, args: list[str] | tuple[str, ...] = ()) -> str:
    """The shell command that runs ``nexus_ray.jobs.<module>`` with ``args``."""
    if not module.startswith("nexus_ray.jobs."):
        module = f"nexus_ray.jobs.{module}"
    python = "python" if os.environ.get("NEXUS_JOB_PYTHON") == "python" else sys.executable
    return " ".join(shlex.quote(p) for p in (python, "-m", module, *args))


def submit(
    module: str, args: list[str] | tuple[str, ...] = (), *, submission_id: str | None = None,
    metadata: dict[str, str] | None = None, num_cpus: float | None = None, env: dict[str, str] | None = None,
) -> str:
    """Submit ``nexus_ray.jobs.<module>`` as a Ray job; returns its submission id.

    A ``submission_id`` makes the submission idempotent: Ray refuses a second job with the same
    id, and this returns the existing one's id instead of starting another.
    """
    c = client()
    if submission_id is not None:
        try:
            c.get_job_info(submission_id)
            return submission_id
        except RuntimeError:
            pass
    runtime_env: dict[str, Any] = {"env_vars": {**_settings_env(), **(env or {})}}
    try:
        return c.submit_job(entrypoint=entrypoint(module, args), submission_id=submission_id,
                            metadata=metadata or {}, runtime_env=runtime_env, entrypoint_num_cpus=num_cpus)
    except RuntimeError as exc:
        if submission_id is not None and "already exists" in str(exc):
            return submission_id
        raise


def info(submission_id: str) -> JobInfo:
    d = client().get_job_info(submission_id)
    return JobInfo(submission_id=submission_id, status=str(getattr(d.status, "value", d.status)),
                   message=d.message or "", entrypoint=d.entrypoint, metadata=dict(d.metadata or {}),
                   start_time_ms=d.start_time, end_time_ms=d.end_time)


def logs(submission_id: str) -> str:
    return client().get_job_logs(submission_id)


def logs_url(submission_id: str) -> str:
    """The dashboard's REST address of the job's logs (what a run history links to)."""
    return f"{dashboard_url()}/api/jobs/{submission_id}/logs"


def stop(submission_id: str) -> bool:
    return client().stop_job(submission_id)


def progress(submission_id: str) -> dict[str, Any]:
    """The last ``{"progress": ...}`` and ``{"result": ...}`` lines the job printed (see nexus_ray.jobs)."""
    seen: dict[str, Any] = {}
    for line in logs(submission_id).splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            if "progress" in obj:
                seen["progress"] = obj
            if "result" in obj:
                seen["result"] = obj["result"]
    return seen


def report(**fields: Any) -> None:
    """For a job: print one progress line (``report(progress=0.5, done=500, total=1000)``)."""
    print(json.dumps(fields, default=str), flush=True)
