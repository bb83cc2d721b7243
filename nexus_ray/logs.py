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

# Every redaction must run in time linear in the length of the text: a log line can carry a
# megabyte of someone else's input, and a pattern that backtracks over it stalls the replica's
# event loop. A pattern that could start anywhere inside a long run of the characters it spans
# (an e-mail's local part, a JWT) is tried only where it can first succeed, and a secret with
# an opening and a closing marker (a PEM block) stops looking once no closing marker is left.
_TOKEN = "A-Za-z0-9_-"

_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    # A JWT starts at the first "eyJ" of a run of token characters (a later one could only match
    # less), so the run is read once, from its start, and what precedes the "eyJ" is kept.
    (
        re.compile(rf"(?<![{_TOKEN}])((?:(?!eyJ)[{_TOKEN}])*+)eyJ[{_TOKEN}]{{5,}}+\.[{_TOKEN}]{{5,}}+\.[{_TOKEN}]*+"),
        r"\1[redacted-jwt]",
    ),
    (re.compile(r"nxk_[A-Za-z0-9]+_[A-Za-z0-9_-]+"), "[redacted-api-key]"),
    # legacy session, email verification, OAuth refresh token, authorization code
    (re.compile(r"nx[svra]_[A-Za-z0-9_-]{20,}"), "[redacted-token]"),
]

_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")

# Personal data: e-mail addresses are identifiers of people, not of requests.
_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")

_FIELD = re.compile(
    r"""(?i)(["']?(?:password|passwd|secret|token|api[_-]?key|authorization|client_secret)["']?\s*[:=]\s*["']?)"""
    r"""[^"',\s}&]+"""
)


def _mask_private_keys(text: str) -> str:
    """``text`` with each PEM private key block, from its BEGIN line to the first END line after it, masked."""
    out, done = [], 0
    while begin := _PEM_BEGIN.search(text, done):
        end = _PEM_END.search(text, begin.end())
        if end is None:
            break  # a later BEGIN would need an END after this one's: there is none
        out += [text[done : begin.start()], "[redacted-key]"]
        done = end.end()
    out.append(text[done:])
    return "".join(out)


def _mask_emails(text: str) -> str:
    """``text`` with each e-mail address (a run of local-part characters, ``@``, a domain) masked.

    The local part always runs back to the start of its run of local-part characters (or to the end
    of the previous address), so it is found by walking back from the ``@``, each character at most
    once, instead of by a pattern that would be tried, and fail, at every character of a long run.
    """
    out, done = [], 0
    at = _EMAIL_DOMAIN.search(text, 1)
    while at:
        start = at.start()
        while start > done and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start == at.start():  # nothing of a local part before this "@"
            at = _EMAIL_DOMAIN.search(text, at.start() + 1)
            continue
        out += [text[done:start], "[redacted-email]"]
        done = at.end()
        at = _EMAIL_DOMAIN.search(text, done + 1)
    out.append(text[done:])
    return "".join(out)


def redact(text: str) -> str:
    """``text`` with every recognisable secret masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    text = _mask_private_keys(text)
    text = _mask_emails(text)
    return _FIELD.sub(r"\1[redacted]", text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and arguments before any handler sees it.

    Serve's access-log records (one per request, marked ``serve_access_log``) are passed as they
    are: Serve writes them from fields alone (method, route template, status, latency, peer
    address), never from a request's path, headers or body, so they hold nothing to mask, and
    formatting and searching them cost every request a few percent of its CPU (bench/RESULTS.md,
    issue 6) although Serve's own filter then drops them (the platform turns its access log off).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "serve_access_log", False):
            return True
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
