"""The authorization matrix: every endpoint of the URLconf x every way a caller can be refused.

Endpoints are enumerated from the URL resolver, so an endpoint added without an entry in CASES fails
here; only the routes in SKIPPED are left out, each for a stated reason (the admin is checked below).
"""

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

from accounts.models import SCOPES, User, split_list
from accounts.services import api_key_create, api_key_revoke, ip_allow_entry_create, mfa_verify, role_grant
from jobs.models import Job, JobMode, JobStatus
from jobs.policies import ENDPOINT_DEFAULTS, policies_changed
from jobsite.api import EndpointView
from tests.access_helpers import confirmed_device, set_policy, totp_code, wrong_code
from tests.conftest import bearer

SKIPPED = {
    "admin/": "the Django admin: staff-only, checked by test_admin_requires_staff_and_otp",
    "admin/rq/": "the RQ dashboard inside the admin: checked by test_admin_requires_staff_and_otp",
    "api-auth/": "DRF's session login/logout pages for the browsable API (sessions: test_session_login_...)",
    "api/schema/": "the OpenAPI schema (documentation)",
    "api/docs/": "Swagger UI (documentation)",
    "metrics": "Prometheus metrics",
    "healthz": "health check for load balancers",
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
    pending_device: TOTPDevice | None = None


@dataclass
class Case:
    """How to make one valid request to an endpoint, and what governs it besides its policy."""

    call: Callable[[APIClient, Ctx], Any]
    success: int
    write: bool = False
    """Account endpoints (no policy row): writes need the account:write scope."""
    mfa: bool = False
    """Account endpoints that always need X-MFA-Code."""
    pending_device: bool = False
    """Needs a TOTP device being enrolled."""


def own_compat_request(client: APIClient, ctx: Ctx) -> str:
    """A compat request the caller owns (anonymous callers share one owner); a refused caller gets ctx.job."""
    created = client.post("/async", {"data": "hello", "iterations": 10}, format="json")
    return created.json().get("request_id", str(ctx.job.pk))


CASES: dict[tuple[str, str], Case] = {
    ("api/v1/jobs/", "get"): Case(lambda c, x: c.get("/api/v1/jobs/"), 200),
    ("api/v1/jobs/sync/", "post"): Case(lambda c, x: c.post("/api/v1/jobs/sync/", HASH, format="json"), 200),
    ("api/v1/jobs/async/", "post"): Case(lambda c, x: c.post("/api/v1/jobs/async/", HASH, format="json"), 202),
    ("api/v1/jobs/export/", "get"): Case(lambda c, x: c.get("/api/v1/jobs/export/?format=jsonl"), 200),
    ("api/v1/jobs/<uuid:job_id>/", "get"): Case(lambda c, x: c.get(f"/api/v1/jobs/{x.job.pk}/"), 200),
    ("api/v1/jobs/<uuid:job_id>/cancel/", "post"): Case(lambda c, x: c.post(f"/api/v1/jobs/{x.job.pk}/cancel/"), 200),
    ("api/v1/credits/", "get"): Case(lambda c, x: c.get("/api/v1/credits/"), 200),
    ("api/v1/credits/ledger/", "get"): Case(lambda c, x: c.get("/api/v1/credits/ledger/"), 200),
    ("api/v1/me/", "get"): Case(lambda c, x: c.get("/api/v1/me/"), 200),
    ("api/v1/me/webhook-secret/", "post"): Case(lambda c, x: c.post("/api/v1/me/webhook-secret/"), 201, write=True),
    ("sync", "post"): Case(lambda c, x: c.post("/sync", {"data": "hello", "iterations": 10}, format="json"), 200),
    ("async", "post"): Case(lambda c, x: c.post("/async", {"data": "hello", "iterations": 10}, format="json"), 200),
    ("requests", "get"): Case(lambda c, x: c.get("/requests"), 200),
    ("requests/<str:request_id>", "get"): Case(lambda c, x: c.get(f"/requests/{own_compat_request(c, x)}"), 200),
    ("api/v1/me/mfa/totp/", "post"): Case(lambda c, x: c.post("/api/v1/me/mfa/totp/"), 201, write=True),
    ("api/v1/me/mfa/totp/", "delete"): Case(lambda c, x: c.delete("/api/v1/me/mfa/totp/"), 204, write=True, mfa=True),
    ("api/v1/me/mfa/totp/confirm/", "post"): Case(
        lambda c, x: c.post("/api/v1/me/mfa/totp/confirm/", {"code": totp_code(x.pending_device)}, format="json"),
        200,
        write=True,
        pending_device=True,
    ),
}

SCENARIOS = [
    "anonymous", "revoked_key", "expired_key", "wrong_role", "missing_scope",
    "ip_outside_allowlist", "mfa_missing", "mfa_wrong", "mfa_replayed", "valid",
]  # fmt: skip

MFA_SCENARIOS = {"mfa_missing", "mfa_wrong", "mfa_replayed"}
REFUSED = {
    "revoked_key": (401, "not_authenticated"),
    "expired_key": (401, "not_authenticated"),
    "wrong_role": (403, "permission_denied"),
    "missing_scope": (403, "permission_denied"),
    "ip_outside_allowlist": (403, "ip_not_allowed"),
    "mfa_missing": (401, "mfa_required"),
    "mfa_wrong": (401, "mfa_invalid"),
    "mfa_replayed": (401, "mfa_invalid"),
}


def view_policy(route: str) -> str | None:
    """The EndpointPolicy name governing a route, or None for the account views (AccountAccess)."""
    match = get_resolver().resolve("/" + route.replace("<uuid:job_id>", "00000000-0000-0000-0000-000000000000"))
    view_class = getattr(match.func, "view_class", None)
    return view_class.endpoint if view_class and issubclass(view_class, EndpointView) else None


def expected(scenario: str, case: Case, policy: str | None) -> tuple[int, str | None]:
    """The status and problem code a scenario must meet; None as code means success."""
    success = (case.success, None)
    if scenario == "valid":
        return success
    if scenario == "anonymous":
        auth_required = ENDPOINT_DEFAULTS[policy].get("auth_required", True) if policy else True
        return (401, "not_authenticated") if auth_required else success
    if policy is None:  # account views: authentication, account:write for writes, MFA where marked
        if scenario in ("wrong_role", "ip_outside_allowlist"):
            return success
        if scenario == "missing_scope" and not case.write:
            return success
        if scenario in MFA_SCENARIOS and not case.mfa:
            return success
    return REFUSED[scenario]


@pytest.fixture(autouse=True)
def _fresh_policies() -> Iterator[None]:
    policies_changed()
    yield
    policies_changed()  # rolled-back rows must not stay cached for the next test


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("route,method", enumerate_endpoints())
@pytest.mark.django_db
def test_authorization_matrix(route: str, method: str, scenario: str, make_user: Callable[..., User]) -> None:
    case = CASES.get((route, method))
    if case is None:
        pytest.fail(f"{method.upper()} /{route} is not in CASES: say how a valid call looks and what governs it")
    policy = view_policy(route)
    user = make_user()
    role_grant(user=user, role_name="viewer")
    ctx = Ctx(
        user=user,
        job=Job.objects.create(owner=user, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, input=HASH["input"]),
    )
    if case.pending_device:
        ctx.pending_device = TOTPDevice.objects.create(user=user, name="default", confirmed=False)

    required_scopes = split_list(ENDPOINT_DEFAULTS[policy].get("scopes", "")) if policy else []
    key_scopes = list(SCOPES)
    policy_fields: dict[str, Any] = {}
    if scenario == "wrong_role":
        role_grant(user=make_user(), role_name="auditor")
        policy_fields["roles"] = "auditor"
    if scenario == "missing_scope":
        required_scopes = required_scopes or ["jobs:read"]
        policy_fields["scopes"] = ",".join(required_scopes)
        key_scopes = [s for s in SCOPES if s not in required_scopes and not (policy is None and s == "account:write")]
    if scenario == "ip_outside_allowlist":
        policy_fields["ip_allowlist"] = True
        ip_allow_entry_create(cidr="10.0.0.0/8", user=user)
        ip_allow_entry_create(cidr="192.0.2.0/24")
        ip_allow_entry_create(cidr="2001:db8::/32", user=user)
    if scenario in MFA_SCENARIOS or scenario == "valid":
        policy_fields["mfa_required"] = True
    if scenario == "valid":
        role_grant(user=user, role_name="auditor")
        policy_fields.update(roles="auditor,ops", ip_allowlist=True)
        ip_allow_entry_create(cidr="127.0.0.0/8", user=user)
    if policy:
        set_policy(policy, **policy_fields)

    key, raw_key = api_key_create(owner=user, name="matrix", scopes=key_scopes)
    if scenario == "revoked_key":
        api_key_revoke(prefix=key.prefix)
    if scenario == "expired_key":
        key.expires_at = timezone.now() - timedelta(seconds=1)
        key.save()

    headers: dict[str, str] = {}
    if case.mfa or (policy and policy_fields.get("mfa_required")):
        device = confirmed_device(user)
        code = totp_code(device)
        if scenario == "mfa_wrong":
            headers["HTTP_X_MFA_CODE"] = wrong_code(device)
        elif scenario == "mfa_replayed":
            assert mfa_verify(user=user, code=code)  # the code was used once already
            headers["HTTP_X_MFA_CODE"] = code
        elif scenario != "mfa_missing":
            headers["HTTP_X_MFA_CODE"] = code

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
    if status >= 400 and (route, method) == ("api/v1/jobs/<uuid:job_id>/cancel/", "post"):
        assert Job.objects.get(pk=ctx.job.pk).status == JobStatus.QUEUED  # a refused call changes nothing


def test_every_skipped_route_exists_and_every_case_is_served() -> None:
    """SKIPPED and CASES cannot rot: each names something the URLconf serves."""
    routes = [route for route, _ in _walk(get_resolver().url_patterns)]
    for prefix in SKIPPED:
        assert any(route.startswith(prefix) for route in routes), f"SKIPPED names {prefix!r}, which is not routed"
    assert set(CASES) == set(enumerate_endpoints())


@pytest.mark.django_db
def test_admin_requires_staff_and_otp(make_user: Callable[..., User]) -> None:
    anonymous = Client()
    for path in ("/admin/", "/admin/rq/", "/admin/jobs/endpointpolicy/"):
        response = anonymous.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path

    def session(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    plain = session(make_user())
    staff = make_user(is_staff=True, is_superuser=True)
    for path in ("/admin/", "/admin/rq/", "/admin/jobs/endpointpolicy/"):
        assert plain.get(path).status_code == 302, path  # not staff
        assert session(staff).get(path).status_code == 200, path  # staff without a device: password suffices

    # A staff member with a device is not admitted on a password alone ...
    device = confirmed_device(staff)
    for path in ("/admin/", "/admin/rq/"):
        assert session(staff).get(path).status_code == 302, path
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
    assert login.get("/admin/").status_code == 200
    assert login.get("/admin/rq/").status_code == 200
    # An API key never opens the admin: it is for the API only.
    _, raw_key = api_key_create(owner=staff, scopes=list(SCOPES))
    assert Client(**bearer(raw_key)).get("/admin/").status_code == 302


@pytest.mark.django_db
def test_session_login_for_the_browsable_api_carries_every_scope_but_not_mfa(user: User) -> None:
    browser = Client()
    assert browser.get("/api/v1/me/").status_code == 401
    login = browser.post("/api-auth/login/", {"username": user.username, "password": "pw", "next": "/api/v1/me/"})
    assert login.status_code == 302
    assert browser.get("/api/v1/me/", HTTP_ACCEPT="application/json").json()["scopes"] == list(SCOPES)
    assert "text/html" in browser.get("/api/v1/jobs/", HTTP_ACCEPT="text/html")["Content-Type"]
    set_policy("jobs.read", mfa_required=True)
    assert browser.get("/api/v1/jobs/", HTTP_ACCEPT="application/json").json()["code"] == "mfa_required"
