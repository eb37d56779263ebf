"""`fetch`: I/O-bound GET of an external http(s) URL; returns status, size and SHA-256 of the body."""

import hashlib
from typing import Any

import httpx
from django.conf import settings
from rest_framework import serializers

from jobs import ssrf
from jobs.kinds.base import Kind, KindError, RunContext
from jobsite.fields import HTTP_URL_PATTERN, FullMatchValidator, StrictCharField


class FetchInput(serializers.Serializer):
    url = StrictCharField(
        max_length=2048,
        validators=[
            FullMatchValidator(HTTP_URL_PATTERN, message="Enter an http(s) URL in ASCII, without credentials.")
        ],
    )

    def validate_url(self, value: str) -> str:
        try:
            ssrf.check_url(value, allow_unresolved=True)
        except ssrf.UrlForbidden as exc:
            raise serializers.ValidationError(f"This URL is forbidden: {exc.reason}.") from None
        return value


REQUEST_HEADERS = {"User-Agent": "Jobsite-fetch/1", "Connection": "close"}
"""`Connection: close`: a fetch never leaves a kept-alive connection that a later fetch could reuse
unwatched by its deadline (jobs.deadline)."""


def run(params: dict[str, Any], context: RunContext) -> dict[str, Any]:
    deadline = context.deadline
    digest = hashlib.sha256()
    size = 0
    timeout = httpx.Timeout(settings.FETCH_READ_TIMEOUT, connect=deadline.cap(settings.FETCH_CONNECT_TIMEOUT))
    try:
        with (
            deadline.http_watch() as watch,
            ssrf.guarded_stream("GET", params["url"], headers=REQUEST_HEADERS, timeout=timeout, auth=watch) as response,
        ):
            expected = _content_length(response)
            for chunk in response.iter_bytes():
                deadline.check()  # a cancel (jobs.stop) is seen between chunks
                size += len(chunk)
                context.report_progress(size / expected if expected else None, f"{size} bytes read")
                if size > settings.FETCH_MAX_BYTES:
                    raise KindError(
                        "response_too_large", f"body exceeds {settings.FETCH_MAX_BYTES} bytes", callers_fault=True
                    )
                digest.update(chunk)
    except ssrf.UrlForbidden as exc:
        raise KindError("url_forbidden", exc.reason, callers_fault=True) from None
    except ssrf.UrlUnresolved as exc:  # the caller's input: counts against no upstream's breaker
        raise KindError("url_unresolvable", str(exc), callers_fault=True) from None
    except httpx.HTTPError as exc:
        deadline.check()  # the watch cut the connection at the deadline: time_limit, not an upstream error
        raise KindError("upstream_unreachable", f"{type(exc).__name__}: {exc}", transient=True) from None
    deadline.check()  # a body cut at the deadline may have looked complete (no Content-Length)
    if response.status_code >= 500:
        raise KindError("upstream_error", f"upstream answered {response.status_code}", transient=True)
    return {"status_code": response.status_code, "bytes": size, "sha256": digest.hexdigest()}


def _content_length(response: httpx.Response) -> int | None:
    """The body's announced length, if any (the fraction of progress reports; None: bytes read only)."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def target_host(params: dict[str, Any]) -> str:
    """The URL's host: one circuit breaker per host, so a failing site cuts off only jobs to it."""
    return httpx.URL(params["url"]).raw_host.decode("ascii").lower().removesuffix(".")


KIND = Kind(
    name="fetch",
    serializer_class=FetchInput,
    run=run,
    cost=2,
    cacheable=True,  # off by default (kind_defaults); each owner's own entries when staff turn it on
    does_io=True,
    time_limit=30,
    retries=2,
    circuit_target=target_host,
)
