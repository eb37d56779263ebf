"""The authorization matrix: every endpoint of the URLconf x every way a caller can be refused.

Endpoints are enumerated from the URL resolver, so an endpoint added without an entry in CASES fails
here; only the routes in SKIPPED are left out, each for a stated reason (the admin and the RQ dashboard
are checked below). Every API route is policy-governed (EndpointView): the compatible routes also answer,
for an authenticated caller, to the API policy of the same action (accounts.endpoints.AUTHENTICATED_ALSO_GOVERNED_BY),
so the IP and MFA scenarios switch those on in the API policy only.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from accounts.api import EndpointView
from accounts.endpoints import AUTHENTICATED_ALSO_GOVERNED_BY
from accounts.models import SCOPES, User, split_list
from accounts.policies import ENDPOINT_DEFAULTS
from accounts.services import api_key_create, api_key_revoke, ip_allow_entry_create, mfa_verify, role_grant
from jobs.models import Batch, Job, JobMode, JobStatus, Upload
from jobsite.redis import get_redis
from tests.access_helpers import confirmed_device, set_policy, totp_code, wrong_code
from tests.conftest import bearer

SKIPPED = {
    "admin/": "the Django admin and the RQ dashboard in it: test_admin_and_rq_dashboard_require_staff_and_otp",
    "api-auth/": "the sign-in pages themselves (test_session_sign_in_needs_the_otp_code_and_is_throttled)",
    "api/schema/": "the OpenAPI schema (documentation, public)",
    "api/docs/": "Swagger UI (documentation, public)",
    "api/redoc/": "ReDoc (documentation, public)",
    "healthz": "health check for load balancers (public)",
}
"""Route prefixes outside the policy matrix, each named on purpose."""

METHODS = ("get", "post", "put", "patch", "delete")
HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern.callback


def _skip_reason(route: str) -> str | None:
    return next((reason for prefix, reason in SKIPPED.items() if route.startswith(prefix)), None)


def enumerate_endpoints() -> list[tuple[str, str]]:
    """(route, method) for every view method the URLconf serves, minus SKIPPED."""
    endpoints = []
    for route, callback in _walk(get_resolver().url_patterns):
        if _skip_reason(route):
            continue
        view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
        methods = [m for m in METHODS if hasattr(view_class, m)] if view_class else ["get"]
        endpoints += [(route, method) for method in methods]
    return endpoints


@dataclass
class Ctx:
    user: User
    job: Job
    scenario: str
    pending_device: TOTPDevice | None = None


@dataclass
class Case:
    """How to make one valid request to an endpoint, and what governs it besides its policy."""

    call: Callable[[APIClient, Ctx], Any]
    success: int
    mfa: bool = False
    """Always needs X-MFA-Code, whatever the policy (removing the TOTP device)."""
    enrolment: bool = False
    """Enrols the first device: a user without one passes the policy's MFA check (MfaVerified)."""
    pending_device: bool = False
    """Needs a TOTP device being enrolled."""
    another_users: int | None = None
    """Status when ctx.job belongs to another user (None: the call does not name ctx.job)."""


def own_compat_request(client: APIClient, ctx: Ctx) -> str:
    """A compat request the caller owns; a refused caller, or the another_user scenario, gets ctx.job."""
    if ctx.scenario == "another_user":
        return str(ctx.job.pk)
    created = client.post("/async", {"data": "hello", "iterations": 10}, format="json")
    return created.json().get("request_id", str(ctx.job.pk))


def finished_with_webhook(job: Job) -> Job:
    """The job made final with a failed webhook: one its owner may have delivered again."""
    job.status, job.callback_url, job.callback_status = JobStatus.SUCCEEDED, "https://example.com/hook", "failed"
    job.save()
    return job


def batch_of(ctx: Ctx) -> Batch:
    """A batch holding ctx.job (queued: the batch can be canceled), owned as ctx.job is."""
    batch = Batch.objects.create(owner=ctx.job.owner, endpoint="jobs.batch", total=1)
    Job.objects.filter(pk=ctx.job.pk).update(batch=batch, batch_index=0, endpoint="jobs.batch")
    return batch


def upload_of(ctx: Ctx) -> Upload:
    """An upload owned as ctx.job is, with room for one more byte."""
    return Upload.objects.create(owner=ctx.job.owner, length=10, expires_at=timezone.now() + timedelta(hours=1))


def upload_patch(client: APIClient, ctx: Ctx) -> Any:
    return client.generic(
        "PATCH",
        f"/api/v1/uploads/{upload_of(ctx).pk}/",
        b"x",
        content_type="application/offset+octet-stream",
        HTTP_UPLOAD_OFFSET="0",
    )


CASES: dict[tuple[str, str], Case] = {
    ("api/v1/batches/", "get"): Case(lambda c, x: c.get("/api/v1/batches/"), 200),
    ("api/v1/batches/", "post"): Case(
        lambda c, x: c.post("/api/v1/batches/", {"requests": [HASH]}, format="json"), 202
    ),
    ("api/v1/batches/<uuid:batch_id>/", "get"): Case(
        lambda c, x: c.get(f"/api/v1/batches/{batch_of(x).pk}/"), 200, another_users=404
    ),
    ("api/v1/batches/<uuid:batch_id>/jobs/", "get"): Case(
        lambda c, x: c.get(f"/api/v1/batches/{batch_of(x).pk}/jobs/"), 200, another_users=404
    ),
    ("api/v1/batches/<uuid:batch_id>/results/", "get"): Case(
        lambda c, x: c.get(f"/api/v1/batches/{batch_of(x).pk}/results/"), 200, another_users=404
    ),
    ("api/v1/batches/<uuid:batch_id>/cancel/", "post"): Case(
        lambda c, x: c.post(f"/api/v1/batches/{batch_of(x).pk}/cancel/"), 200, another_users=404
    ),
    ("api/v1/uploads/", "post"): Case(lambda c, x: c.post("/api/v1/uploads/", HTTP_UPLOAD_LENGTH="10"), 201),
    ("api/v1/uploads/<uuid:upload_id>/", "get"): Case(
        lambda c, x: c.get(f"/api/v1/uploads/{upload_of(x).pk}/"), 200, another_users=404
    ),
    ("api/v1/uploads/<uuid:upload_id>/", "patch"): Case(upload_patch, 200, another_users=404),
    ("api/v1/jobs/", "get"): Case(lambda c, x: c.get("/api/v1/jobs/"), 200),
    ("api/v1/jobs/sync/", "post"): Case(lambda c, x: c.post("/api/v1/jobs/sync/", HASH, format="json"), 200),
    ("api/v1/jobs/async/", "post"): Case(lambda c, x: c.post("/api/v1/jobs/async/", HASH, format="json"), 202),
    ("api/v1/jobs/export/", "get"): Case(lambda c, x: c.get("/api/v1/jobs/export/?format=jsonl"), 200),
    ("api/v1/jobs/<uuid:job_id>/", "get"): Case(
        lambda c, x: c.get(f"/api/v1/jobs/{x.job.pk}/"), 200, another_users=404
    ),
    # A final job's stream sends its `job` event and ends at once (a running one's would hold the test).
    ("api/v1/jobs/<uuid:job_id>/events/", "get"): Case(
        lambda c, x: c.get(f"/api/v1/jobs/{finished_with_webhook(x.job).pk}/events/"), 200, another_users=404
    ),
    ("api/v1/jobs/<uuid:job_id>/cancel/", "post"): Case(
        lambda c, x: c.post(f"/api/v1/jobs/{x.job.pk}/cancel/"), 200, another_users=404
    ),
    ("api/v1/jobs/<uuid:job_id>/webhook/redeliver/", "post"): Case(
        lambda c, x: c.post(f"/api/v1/jobs/{finished_with_webhook(x.job).pk}/webhook/redeliver/"),
        202,
        another_users=404,
    ),
    # Past every gate the call stops at the caller's missing signing secret: sending needs a callbacks worker.
    ("api/v1/me/webhooks/test/", "post"): Case(
        lambda c, x: c.post("/api/v1/me/webhooks/test/", {"url": "http://8.8.8.8/hook"}, format="json"), 409
    ),
    ("api/v1/me/webhook-deliveries/", "get"): Case(lambda c, x: c.get("/api/v1/me/webhook-deliveries/"), 200),
    ("api/v1/credits/", "get"): Case(lambda c, x: c.get("/api/v1/credits/"), 200),
    ("api/v1/credits/ledger/", "get"): Case(lambda c, x: c.get("/api/v1/credits/ledger/"), 200),
    ("api/v1/me/", "get"): Case(lambda c, x: c.get("/api/v1/me/"), 200),
    ("api/v1/me/webhook-secret/", "post"): Case(lambda c, x: c.post("/api/v1/me/webhook-secret/"), 201),
    ("api/v1/me/limits/", "get"): Case(lambda c, x: c.get("/api/v1/me/limits/"), 200),
    ("api/v1/auth/token/", "post"): Case(lambda c, x: c.post("/api/v1/auth/token/"), 200),
    ("metrics", "get"): Case(lambda c, x: c.get("/metrics"), 200),
    ("sync", "post"): Case(lambda c, x: c.post("/sync", {"data": "hello", "iterations": 10}, format="json"), 200),
    ("async", "post"): Case(lambda c, x: c.post("/async", {"data": "hello", "iterations": 10}, format="json"), 200),
    ("requests", "get"): Case(lambda c, x: c.get("/requests"), 200),
    ("requests/<str:request_id>", "get"): Case(
        lambda c, x: c.get(f"/requests/{own_compat_request(c, x)}"), 200, another_users=404
    ),
    ("api/v1/me/mfa/totp/", "post"): Case(lambda c, x: c.post("/api/v1/me/mfa/totp/"), 201, enrolment=True),
    ("api/v1/me/mfa/totp/", "delete"): Case(lambda c, x: c.delete("/api/v1/me/mfa/totp/"), 204, mfa=True),
    ("api/v1/me/mfa/totp/confirm/", "post"): Case(
        lambda c, x: c.post("/api/v1/me/mfa/totp/confirm/", {"code": totp_code(x.pending_device)}, format="json"),
        200,
        enrolment=True,
        pending_device=True,
    ),
}

SCENARIOS = [
    "anonymous",
    "revoked_key",
    "expired_key",
    "wrong_role",
    "missing_scope",
    "ip_outside_allowlist",
    "mfa_missing",
    "mfa_wrong",
    "mfa_replayed",
    "staff_without_otp",
    "another_user",
    "valid",
]

MFA_SCENARIOS = {"mfa_missing", "mfa_wrong", "mfa_replayed"}
REFUSED = {
    "anonymous": (401, "not_authenticated"),
    "staff_without_otp": (401, "not_authenticated"),
    "revoked_key": (401, "not_authenticated"),
    "expired_key": (401, "not_authenticated"),
    "wrong_role": (403, "permission_denied"),
    "missing_scope": (403, "permission_denied"),
    "ip_outside_allowlist": (403, "ip_not_allowed"),
    "mfa_missing": (401, "mfa_required"),
    "mfa_wrong": (401, "mfa_invalid"),
    "mfa_replayed": (401, "mfa_invalid"),
}


def view_policy(route: str, method: str) -> str:
    """The EndpointPolicy name governing a route's method; every API route has one."""
    match = get_resolver().resolve("/" + re.sub(r"<uuid:\w+>", "00000000-0000-0000-0000-000000000000", route))
    view_class = getattr(match.func, "view_class", None)
    assert view_class and issubclass(view_class, EndpointView), f"/{route} is not policy-governed (EndpointView)"
    return view_class.endpoint_for(method)


def api_policy(policy: str) -> str:
    """The policy an authenticated caller also answers to: the API policy of the same action, or its own."""
    return AUTHENTICATED_ALSO_GOVERNED_BY.get(policy, policy)


def expected(scenario: str, case: Case, policy: str) -> tuple[int, str | None]:
    """The status and problem code a scenario must meet; None as code means success."""
    if scenario == "valid":
        return case.success, None
    if scenario == "another_user":
        return (case.another_users or case.success), None
    if scenario in MFA_SCENARIOS and case.enrolment:
        return case.success, None  # no device yet: nothing to ask a code of
    if scenario == "anonymous" and not ENDPOINT_DEFAULTS[policy].get("auth_required", True):
        return case.success, None  # public by default (metrics.read)
    return REFUSED[scenario]


pytestmark = pytest.mark.usefixtures("fresh_policies")


def _session_of_staff_without_otp(make_user: Callable[..., User]) -> APIClient:
    """A staff member whose password is known but whose TOTP device is not at hand (force_login: no OTP step)."""
    staff = make_user(is_staff=True, is_superuser=True)
    confirmed_device(staff)
    client = APIClient()
    client.force_login(staff)
    return client


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("route,method", enumerate_endpoints())
@pytest.mark.django_db
def test_authorization_matrix(route: str, method: str, scenario: str, make_user: Callable[..., User]) -> None:
    case = CASES.get((route, method))
    if case is None:
        pytest.fail(f"{method.upper()} /{route} is not in CASES: say how a valid call looks and what governs it")
    policy = view_policy(route, method)
    governing = api_policy(policy)
    user = make_user()
    role_grant(user=user, role_name="viewer")
    job_owner = make_user() if scenario == "another_user" else user
    ctx = Ctx(
        user=user,
        job=Job.objects.create(
            owner=job_owner, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, input=HASH["input"]
        ),
        scenario=scenario,
    )
    if case.pending_device:
        ctx.pending_device = TOTPDevice.objects.create(user=user, name="default", confirmed=False)

    required_scopes = set(split_list(ENDPOINT_DEFAULTS[policy].get("scopes", "")))
    required_scopes |= set(split_list(ENDPOINT_DEFAULTS[governing].get("scopes", "")))
    key_scopes = list(SCOPES)
    fields: dict[str, dict[str, Any]] = {policy: {}, governing: {}}
    if scenario == "wrong_role":
        role_grant(user=make_user(), role_name="auditor")
        fields[policy]["roles"] = "auditor"
    if scenario == "missing_scope":
        if not required_scopes:  # the route needs none by default: require one
            required_scopes = {"jobs:read"}
            fields[policy]["scopes"] = "jobs:read"
        key_scopes = [s for s in SCOPES if s not in required_scopes]
    if scenario == "ip_outside_allowlist":
        fields[governing]["ip_allowlist"] = True
        ip_allow_entry_create(cidr="10.0.0.0/8", user=user)
        ip_allow_entry_create(cidr="192.0.2.0/24")
        ip_allow_entry_create(cidr="2001:db8::/32", user=user)
    if scenario in MFA_SCENARIOS or scenario == "valid":
        fields[governing]["mfa_required"] = True
    if scenario == "valid":
        role_grant(user=user, role_name="auditor")
        for name in {policy, governing}:
            fields[name].update(roles="auditor,ops", ip_allowlist=True, mfa_required=True)
        ip_allow_entry_create(cidr="127.0.0.0/8", user=user)
    for name, values in fields.items():
        set_policy(name, **values)

    key, raw_key = api_key_create(owner=user, name="matrix", scopes=key_scopes)
    if scenario == "revoked_key":
        api_key_revoke(prefix=key.prefix)
    if scenario == "expired_key":
        key.expires_at = timezone.now() - timedelta(seconds=1)
        key.save()

    headers: dict[str, str] = {}
    if (case.mfa or fields[governing].get("mfa_required")) and not case.enrolment:
        device = confirmed_device(user)
        code = totp_code(device)
        if scenario == "mfa_wrong":
            headers["HTTP_X_MFA_CODE"] = wrong_code(device)
        elif scenario == "mfa_replayed":
            assert mfa_verify(user=user, code=code)  # the code was used once already
            headers["HTTP_X_MFA_CODE"] = code
        elif scenario != "mfa_missing":
            headers["HTTP_X_MFA_CODE"] = code

    if scenario == "staff_without_otp":
        client = _session_of_staff_without_otp(make_user)
    else:
        client = APIClient()
        if scenario != "anonymous":
            client.credentials(**bearer(raw_key), **headers)
    response = case.call(client, ctx)

    status, code = expected(scenario, case, policy)
    assert response.status_code == status, (scenario, route, method, getattr(response, "content", b"")[:300])
    if code is not None:
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["code"] == code
        assert raw_key not in response.content.decode()
    if scenario in ("another_user", "staff_without_otp") and method == "get" and status == 200:
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert str(ctx.job.pk).encode() not in body  # nobody else's job shows in a listing
    if status >= 400 and (route, method) == ("api/v1/jobs/<uuid:job_id>/cancel/", "post"):
        assert Job.objects.get(pk=ctx.job.pk).status == JobStatus.QUEUED  # a refused call changes nothing


def test_every_skipped_route_exists_and_every_case_is_served() -> None:
    """SKIPPED and CASES cannot rot: each names something the URLconf serves."""
    routes = [route for route, _ in _walk(get_resolver().url_patterns)]
    for prefix in SKIPPED:
        assert any(route.startswith(prefix) for route in routes), f"SKIPPED names {prefix!r}, which is not routed"
    assert set(CASES) == set(enumerate_endpoints())


RQ_DASHBOARD = ("/admin/rq/", "/admin/rq/stats.json", "/admin/rq/metrics/", "/admin/rq/queues/0/")
"""The RQ dashboard, its JSON and its Prometheus view: each behind the admin's own check."""


def _session(user: User) -> Client:
    client = Client()
    client.force_login(user)  # a password-only session: no OTP step
    return client


@pytest.mark.django_db
def test_admin_and_rq_dashboard_require_staff_and_otp(make_user: Callable[..., User]) -> None:
    paths = ("/admin/", "/admin/accounts/endpointpolicy/", *RQ_DASHBOARD)
    anonymous = Client()
    for path in paths:
        response = anonymous.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path

    plain = _session(make_user())
    staff = make_user(is_staff=True, is_superuser=True)
    for path in paths:
        assert plain.get(path).status_code == 302, path  # not staff
        assert _session(staff).get(path).status_code == 200, path  # staff without a device: password suffices

    # A staff member with a device is not admitted on a password alone, the RQ JSON included ...
    device = confirmed_device(staff)
    for path in paths:
        assert _session(staff).get(path).status_code == 302, path
    login = Client()
    refused = login.post("/admin/login/", {"username": staff.username, "password": "pw", "next": "/admin/"})
    assert refused.status_code == 200 and login.get("/admin/").status_code == 302
    # ... but with a code of that device.
    admitted = login.post(
        "/admin/login/",
        {
            "username": staff.username,
            "password": "pw",
            "otp_device": device.persistent_id,
            "otp_token": totp_code(device),
            "next": "/admin/",
        },
    )
    assert admitted.status_code == 302, admitted.context["form"].errors
    for path in paths:
        assert login.get(path).status_code == 200, path
    # An API key never opens the admin nor the RQ JSON: it is for the API only.
    _, raw_key = api_key_create(owner=staff, scopes=list(SCOPES))
    for path in paths:
        assert Client(**bearer(raw_key)).get(path).status_code == 302, path


@pytest.mark.django_db
def test_session_sign_in_for_the_browsable_api_carries_every_scope_but_not_mfa(user: User) -> None:
    browser = Client()
    assert browser.get("/api/v1/me/").status_code == 401
    page = browser.get("/api-auth/login/?next=/api/v1/me/")
    assert page.status_code == 200 and b'name="otp_token"' in page.content  # the one sign-in form, code included
    login = browser.post("/api-auth/login/", {"username": user.username, "password": "pw", "next": "/api/v1/me/"})
    assert login.status_code == 302
    assert browser.get("/api/v1/me/", HTTP_ACCEPT="application/json").json()["scopes"] == list(SCOPES)
    assert "text/html" in browser.get("/api/v1/jobs/", HTTP_ACCEPT="text/html")["Content-Type"]
    set_policy("jobs.read", mfa_required=True)
    assert browser.get("/api/v1/jobs/", HTTP_ACCEPT="application/json").json()["code"] == "mfa_required"


@pytest.mark.django_db
def test_staff_api_session_needs_the_otp_code_like_the_admin(make_user: Callable[..., User]) -> None:
    """One rule for every session: a user with a TOTP device signs in with its code, at /admin/ or /api-auth/."""
    someone = make_user()
    theirs = Job.objects.create(owner=someone, endpoint="jobs.sync", kind="hash", mode=JobMode.SYNC, input={})
    staff = make_user(is_staff=True, is_superuser=True)
    device = confirmed_device(staff)

    browser = Client()
    refused = browser.post("/api-auth/login/", {"username": staff.username, "password": "pw", "next": "/api/v1/jobs/"})
    assert refused.status_code == 200  # the form asks for the device's code
    for path in ("/api/v1/jobs/", f"/api/v1/jobs/{theirs.pk}/", "/admin/rq/stats.json"):
        assert browser.get(path, HTTP_ACCEPT="application/json").status_code in (302, 401), path
    # A password-only session however obtained carries nothing: not the API, not staff powers.
    half = _session(staff)
    answer = half.get("/api/v1/jobs/", HTTP_ACCEPT="application/json")
    assert answer.status_code == 401 and answer.json()["code"] == "not_authenticated"
    assert half.get(f"/api/v1/jobs/{theirs.pk}/", HTTP_ACCEPT="application/json").status_code == 401

    admitted = browser.post(
        "/api-auth/login/",
        {
            "username": staff.username,
            "password": "pw",
            "otp_device": device.persistent_id,
            "otp_token": totp_code(device),
            "next": "/api/v1/jobs/",
        },
    )
    assert admitted.status_code == 302, admitted.context["form"].errors
    listed = browser.get("/api/v1/jobs/", HTTP_ACCEPT="application/json").json()["results"]
    assert str(theirs.pk) in {job["id"] for job in listed}  # staff: all, once verified
    assert browser.get("/admin/rq/stats.json").status_code == 200


@pytest.mark.django_db
def test_sign_in_is_throttled_per_account_and_per_ip(
    make_user: Callable[..., User], settings: pytest.FixtureRequest
) -> None:
    settings.LOGIN_RATE = "3/m"
    victim = make_user()
    for path in ("/api-auth/login/", "/admin/login/"):
        victim.is_staff = path == "/admin/login/"
        victim.save()
        get_redis().flushdb()  # each sign-in form starts with fresh counters
        for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            wrong = Client(REMOTE_ADDR=address).post(path, {"username": victim.username, "password": "nope"})
            assert wrong.status_code == 200, path
        # The account is throttled from any address, even with the right password ...
        blocked = Client(REMOTE_ADDR="203.0.113.4").post(path, {"username": victim.username, "password": "pw"})
        assert blocked.status_code == 429, path
        # ... and one address that tries many accounts is throttled too.
        get_redis().flushdb()
        spray = Client(REMOTE_ADDR="198.51.100.7")
        statuses = [spray.post(path, {"username": f"guess{n}", "password": "x"}).status_code for n in range(4)]
        assert statuses == [200, 200, 200, 429], path
        other = make_user(is_staff=True)
        assert (
            Client(REMOTE_ADDR="198.51.100.8").post(path, {"username": other.username, "password": "pw"}).status_code
            == 302
        )
