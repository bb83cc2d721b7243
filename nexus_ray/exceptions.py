"""One error hierarchy for the platform, mapped to RFC 9457 problem+json.

::

    NexusError                      500 (base; ``status`` picks the HTTP status)
    ├── BadRequest                  400
    │   └── ValidationFailed        422  (``errors``: [{"field", "message", "type"}])
    ├── Unauthorized                401  (WWW-Authenticate: Bearer)
    ├── Forbidden                   403
    ├── NotFound                    404
    ├── Conflict                    409
    ├── PayloadTooLarge             413
    ├── RateLimited                 429  (Retry-After)
    └── ServiceUnavailable          503

Every error passes all of its arguments to ``Exception.__init__`` so it survives
pickling across Ray processes (a DeploymentHandle call re-raises it intact).
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://nexus.local/problems/"
PROBLEM_JSON = "application/problem+json"


class NexusError(Exception):
    """Base error of the platform; carries what a problem+json body needs."""

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(self, detail: str = "", *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail, extra, headers)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments need an explicit reduce to pickle
        return (_rebuild, (type(self), self.detail, self.extra, self.headers))

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body of this error."""
        body: dict[str, Any] = {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


def _rebuild(
    cls: type[NexusError], detail: str, extra: dict[str, Any], headers: dict[str, str]
) -> NexusError:
    return cls(detail, extra=extra, headers=headers)


class BadRequest(NexusError):
    status, title, slug = 400, "Bad Request", "bad-request"


class ValidationFailed(BadRequest):
    """Input that does not fit the schema; ``errors`` names each offending field."""

    status, title, slug = 422, "Validation Failed", "validation"

    @classmethod
    def for_field(cls, field: str, message: str, type_: str = "value_error") -> ValidationFailed:
        return cls(f"{field}: {message}", extra={"errors": [{"field": field, "message": message, "type": type_}]})


class Unauthorized(NexusError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(
        self, detail: str = "", *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(detail, extra=extra, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class Forbidden(NexusError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(NexusError):
    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(NexusError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"


class Conflict(NexusError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(NexusError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(NexusError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class RateLimited(NexusError):
    status, title, slug = 429, "Too Many Requests", "rate-limited"

    @classmethod
    def retry_after(cls, seconds: int, scope: str) -> RateLimited:
        seconds = max(1, int(seconds))
        return cls(
            f"rate limit per {scope} exceeded; retry in {seconds} s",
            extra={"retry_after": seconds, "limit_scope": scope},
            headers={"Retry-After": str(seconds)},
        )


class BadGateway(NexusError):
    """The entrypoint's answer when a replica ended the connection unanswered (``runtime.cluster``)."""

    status, title, slug = 502, "Bad Gateway", "bad-gateway"


class ServiceUnavailable(NexusError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class GatewayTimeout(NexusError):
    """The entrypoint's answer when a replica did not answer in time (``runtime.cluster``)."""

    status, title, slug = 504, "Gateway Timeout", "gateway-timeout"


_BY_STATUS = {
    c.status: c
    for c in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict, PayloadTooLarge,
              UnsupportedMediaType, RateLimited, ServiceUnavailable)
}


def for_status(status: int, detail: str = "") -> NexusError:
    """The platform error for an HTTP status raised by the framework (404 route, 405 method...)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        err = NexusError(detail)
        err.status = status
        err.title = "Error"
        err.slug = "http-" + str(status)
        return err
    return cls(detail)
