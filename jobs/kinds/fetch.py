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


def run(params: dict[str, Any], context: RunContext) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    timeout = httpx.Timeout(settings.FETCH_READ_TIMEOUT, connect=settings.FETCH_CONNECT_TIMEOUT)
    try:
        with ssrf.guarded_stream(
            "GET", params["url"], headers={"User-Agent": "Jobsite-fetch/1"}, timeout=timeout
        ) as response:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > settings.FETCH_MAX_BYTES:
                    raise KindError(
                        "response_too_large", f"body exceeds {settings.FETCH_MAX_BYTES} bytes", callers_fault=True
                    )
                digest.update(chunk)
    except ssrf.UrlForbidden as exc:
        raise KindError("url_forbidden", exc.reason, callers_fault=True) from None
    except ssrf.UrlUnresolved as exc:
        raise KindError("upstream_unreachable", str(exc), transient=True) from None
    except httpx.HTTPError as exc:
        raise KindError("upstream_unreachable", f"{type(exc).__name__}: {exc}", transient=True) from None
    if response.status_code >= 500:
        raise KindError("upstream_error", f"upstream answered {response.status_code}", transient=True)
    return {"status_code": response.status_code, "bytes": size, "sha256": digest.hexdigest()}


KIND = Kind(
    name="fetch",
    serializer_class=FetchInput,
    run=run,
    cost=2,
    cacheable=False,
    does_io=True,
    time_limit=30,
    retries=2,
)
