"""JSON logs with request ids, and a filter that keeps secrets out of them.

Every record carries the request id of the request being served (a context
variable set by the edge middleware). The redaction filter masks bearer tokens,
JWTs, API keys, PEM blocks and ``password``/``secret``/``token`` fields, whatever
logger they come from, because a secret in a log is a leak however it got there.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("nexus_request_id", default=None)

_REDACTIONS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"nxk_[A-Za-z0-9]+_[A-Za-z0-9_-]+"), "[redacted-api-key]"),
    # legacy session, email verification, OAuth refresh token, authorization code
    (re.compile(r"nx[svra]_[A-Za-z0-9_-]{20,}"), "[redacted-token]"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), "[redacted-key]"),
    # Personal data: e-mail addresses are identifiers of people, not of requests.
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[redacted-email]"),
    (
        re.compile(r"""(?i)(["']?(?:password|passwd|secret|token|api[_-]?key|authorization|client_secret)["']?\s*[:=]\s*["']?)[^"',\s}&]+"""),
        r"\1[redacted]",
    ),
]


def redact(text: str) -> str:
    """``text`` with every recognisable secret masked."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and arguments before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.msg % record.args
            except (TypeError, ValueError):
                record.msg = f"{record.msg} {record.args!r}"
            record.args = None
        record.msg = redact(str(record.msg))
        return True


def _serve_request_id() -> str | None:
    """The request id Serve carries for the request being handled (also across DeploymentHandle calls)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:
        return None


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, extra fields."""

    _STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get() or _serve_request_id()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in self._STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(out, default=str))


_configured = False


def configure(level: str = "INFO") -> None:
    """Send the platform's logs as JSON to stderr, redacted; idempotent."""
    global _configured
    if _configured:
        return
    _configured = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger("nexus_ray")
    root.setLevel(level)
    root.addHandler(handler)
    root.propagate = False
    # Libraries log through their own loggers; mask secrets there too.
    for name in ("", "ray.serve", "uvicorn", "uvicorn.access", "aiokafka", "asyncpg", "pymongo"):
        logging.getLogger(name).addFilter(RedactingFilter())
