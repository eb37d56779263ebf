"""schemathesis hooks for tests/test_schema_fuzz.py (loaded through SCHEMATHESIS_HOOKS); no check is changed.
They act on whole cases (`filter_case`, `map_case`), the hooks every phase applies, the coverage phase included.

- URLs whose host is an address literal (any notation: `0`, `127.1`, `0x7f.1`, `1.2.3.999`, `name.4`, as the
  guard's WHATWG IPv4 parser reads them) are left out of the
  generated bodies: which addresses may be reached is the SSRF guard's policy (API.md: 400 for unspecified,
  link-local, reserved... addresses), which no JSON Schema can state; tests/test_ssrf.py covers it.
- So are URLs whose explicit port the deployment's port policy refuses (OUTBOUND_ALLOWED_PORTS minus
  OUTBOUND_DENIED_PORTS, read through jobs.ssrf.port_allowed from the server's own settings): also a policy, not
  a schema; tests/test_ssrf.py covers it.
- A well-formed `depends_on` (a job's, or a batch item's: indexes of the batch or job ids) is sent empty, and a `run_at` more than a day ahead (or beyond the range of datetimes)
  is moved to a minute ahead: which
  ids name the caller's jobs is data, and how far ahead a job may be scheduled is a policy (`max_schedule_ahead`,
  7 days by default), neither of which a schema can state; tests/test_held_jobs.py covers both refusals.
- An upload's chunk (`application/offset+octet-stream`, tus) is sent as raw bytes, as `application/octet-stream` is.
- A job input's well-formed `upload_id` (without `data`) is sent as inline `data` instead: which ids name the
  caller's complete uploads is data, as with depends_on; tests/test_upload_inputs.py covers the refusals.
- Each generated Idempotency-Key gets a unique suffix: reusing a key with another body is a documented refusal
  (422 idempotency_key_reused), and tests/test_idempotency.py covers it; here a key must not tie unrelated cases.
"""

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import schemathesis

KEY_HEADER = "Idempotency-Key"
KEY_MAX_LENGTH = 255
KEY_PATTERN = r"^[\x21-\x7e]+( +[\x21-\x7e]+)*$"
"""jobs.idempotency's rule (this module runs in schemathesis' process, without Django): only valid keys are
made unique, so that a key generated to be invalid stays invalid."""
URL_FIELDS = ("url", "callback_url")
DEPENDS_ON_MAX = 100
"""jobs.dependencies' cap, the schema's maxItems (this module runs without Django)."""
_KEY_SUFFIX_LENGTH = 33
HTTPX_IPV4_STYLE = re.compile(r"^[0-9]+.[0-9]+.[0-9]+.[0-9]+$")
"""httpx's own test for an IPv4-style host (its dots match any character)."""


def _is_address_literal(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        host = urlsplit(url).netloc.rsplit("@", 1)[-1]
    except ValueError:
        return False
    host = re.sub(r":\d*$", "", host)
    if HTTPX_IPV4_STYLE.match(host):  # httpx parses these as IPv4 and refuses the invalid ones
        return True
    from jobs.ssrf import UrlForbidden, parse_ipv4  # the guard's own WHATWG IPv4 parser

    try:
        return parse_ipv4(host) is not None  # every notation: decimal, octal, hex, short
    except UrlForbidden:
        return True  # ends in a number, so an IPv4 address to the guard, and an invalid one


def _has_refused_port(url: Any) -> bool:
    from jobs.ssrf import port_allowed  # the server's settings: DJANGO_SETTINGS_MODULE is in this environment

    if not isinstance(url, str):
        return False
    try:
        port = urlsplit(url).port
    except ValueError:
        return False  # not a valid port at all: the schema's pattern refuses it, a case worth sending
    return port is not None and not port_allowed(port)


def _urls(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        return []
    found = [body.get(name) for name in URL_FIELDS]
    in_batch = body.get("requests") if isinstance(body.get("requests"), list) else []
    return found + _urls(body.get("input")) + [url for request in in_batch for url in _urls(request)]


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return not any(_is_address_literal(url) or _has_refused_port(url) for url in _urls(case.body))


def _is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(uuid.UUID(value))
    except ValueError:
        return False


def _is_job_id_list(value: Any) -> bool:
    """A depends_on the schema calls valid: at most DEPENDS_ON_MAX strings in UUID form."""
    return isinstance(value, list) and len(value) <= DEPENDS_ON_MAX and all(_is_uuid(item) for item in value)


def _is_batch_dependency_list(value: Any) -> bool:
    """A batch item's depends_on the schema calls valid: at most DEPENDS_ON_MAX request indexes or job ids."""

    def entry(item: Any) -> bool:
        integral = (isinstance(item, int) and not isinstance(item, bool)) or (
            isinstance(item, float) and item.is_integer()
        )
        return (integral and item >= 0) or _is_uuid(item)

    return isinstance(value, list) and len(value) <= DEPENDS_ON_MAX and all(entry(item) for item in value)


def _far_ahead(value: Any) -> bool:
    """More than a day ahead, or out of the range a server stores (year 1 at +14:00 is before UTC's year 1)."""
    try:
        instant = datetime.fromisoformat(value) if isinstance(value, str) else None
        return (
            instant is not None
            and instant.tzinfo is not None
            and instant.astimezone(UTC) > datetime.now(UTC) + timedelta(days=1)
        )
    except ValueError:
        return False
    except OverflowError:
        return True


def _hold_within_policy(body: Any) -> None:
    if not isinstance(body, dict):
        return
    if _is_job_id_list(body.get("depends_on")):
        body["depends_on"] = []
    if _far_ahead(body.get("run_at")):
        body["run_at"] = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    for request in body.get("requests") if isinstance(body.get("requests"), list) else []:
        if isinstance(request, dict) and _is_batch_dependency_list(request.get("depends_on")):
            request["depends_on"] = []


def _upload_inline(body: Any) -> None:
    """An input naming an upload by a well-formed id alone gets the schema's other alternative, inline data."""
    if not isinstance(body, dict):
        return
    job_input = body.get("input")
    if isinstance(job_input, dict) and _is_uuid(job_input.get("upload_id")) and "data" not in job_input:
        del job_input["upload_id"]
        job_input["data"] = "uploaded"
    for request in body.get("requests") if isinstance(body.get("requests"), list) else []:
        _upload_inline(request)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    key = case.headers.get(KEY_HEADER) if case.headers is not None else None
    if isinstance(key, str) and len(key) <= KEY_MAX_LENGTH and re.fullmatch(KEY_PATTERN, key):
        case.headers[KEY_HEADER] = f"{key[: KEY_MAX_LENGTH - _KEY_SUFFIX_LENGTH]}-{uuid.uuid4().hex}"
    _hold_within_policy(case.body)
    _upload_inline(case.body)
    return case


schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
