"""The gate of every policy-governed request (accounts.api.EndpointView): each authentication, permission and
throttle class on its own, the per-process credentials cache and its invalidation, and the gate's budget:
no SQL statement and one Redis round trip for an API-key request in the steady state."""

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from django.contrib.admin.sites import site as admin_site
from django.test import RequestFactory
from django.utils import timezone
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory

from accounts.api import EndpointView
from accounts.authentication import ApiKeyAuthentication
from accounts.endpoints import Endpoint
from accounts.models import SCOPES, ApiKey, EndpointPolicy, IpAllowEntry, RateLimitAlgorithm, Role, User
from accounts.permissions import (
    AuthenticatedIfRequired,
    ClientIpAllowed,
    EndpointEnabled,
    HasPolicyRole,
    HasPolicyScopes,
    MfaVerified,
)
from accounts.policies import ENDPOINT_DEFAULTS
from accounts.ratelimit import Limiter, rate_limit_hit, rate_limit_hit_all
from accounts.selectors import api_key_get_active
from accounts.services import api_key_create, api_key_revoke, ip_allow_entry_create, role_grant, role_revoke
from accounts.throttles import AnonymousBudgetThrottle, LimiterThrottle, PolicyRateThrottle
from bench.overhead import redis_round_trips
from jobsite.errors import (
    IpNotAllowed,
    MfaRequired,
    NotAuthenticated,
    PermissionDenied,
    RateLimited,
    ServiceError,
)
from jobsite.process_cache import settings_cache
from jobsite.redis import get_redis
from tests.access_helpers import clear_of_window_edge, confirmed_device, set_policy, totp_code
from tests.conftest import bearer
from tests.waiting import wait_until

factory = APIRequestFactory()


def gate_request(
    *, policy: EndpointPolicy, user: User | None = None, key: ApiKey | None = None, address: str = "10.1.2.3"
) -> Request:
    """A DRF request as EndpointView.initial leaves it: its policy loaded, its caller authenticated (or not)."""
    request = Request(factory.get("/", REMOTE_ADDR=address))
    request.user = user
    request.auth = key
    request.policy = request._request.policy = policy
    request.authenticated_policy = None
    return request


def policy(name: str = Endpoint.ACCOUNT_READ, **fields: Any) -> EndpointPolicy:
    return EndpointPolicy(name=name, **{**ENDPOINT_DEFAULTS[name], **fields})


def refusal(check: BasePermission | LimiterThrottle, request: Request) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        if isinstance(check, BasePermission):
            check.has_permission(request, EndpointView())
        else:
            check.allow_request(request, EndpointView())
    return raised.value


def admitted(check: BasePermission | LimiterThrottle, request: Request) -> bool:
    if isinstance(check, BasePermission):
        return check.has_permission(request, EndpointView())
    return check.allow_request(request, EndpointView())


# --- each class on its own ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_key_authentication_refuses_a_revoked_key_alike_an_unknown_one(user: User) -> None:
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    authenticate = ApiKeyAuthentication().authenticate
    assert authenticate(Request(factory.get("/", **bearer(raw_key)))) == (user, key)
    api_key_revoke(prefix=key.prefix)
    for presented in (raw_key, f"{key.prefix}.forged", "jsk_0.unknown"):
        with pytest.raises(NotAuthenticated):
            authenticate(Request(factory.get("/", **bearer(presented))))
    assert authenticate(Request(factory.get("/"))) is None  # not a bearer: other classes may authenticate


def test_authenticated_if_required() -> None:
    assert isinstance(refusal(AuthenticatedIfRequired(), gate_request(policy=policy())), NotAuthenticated)
    assert admitted(AuthenticatedIfRequired(), gate_request(policy=policy(auth_required=False)))


def test_endpoint_enabled() -> None:
    problem = refusal(EndpointEnabled(), gate_request(policy=policy(enabled=False)))
    assert isinstance(problem, PermissionDenied)
    assert problem.detail == "The endpoint account.read is disabled."
    assert admitted(EndpointEnabled(), gate_request(policy=policy()))


@pytest.mark.django_db
def test_client_ip_allowed(user: User) -> None:
    allowlisted = policy(ip_allowlist=True)
    assert isinstance(refusal(ClientIpAllowed(), gate_request(policy=allowlisted, user=user)), IpNotAllowed)
    ip_allow_entry_create(cidr="10.1.0.0/16", user=user)
    assert admitted(ClientIpAllowed(), gate_request(policy=allowlisted, user=user))
    assert isinstance(
        refusal(ClientIpAllowed(), gate_request(policy=allowlisted, user=user, address="10.2.0.1")), IpNotAllowed
    )
    assert admitted(ClientIpAllowed(), gate_request(policy=policy(), user=user, address="10.2.0.1"))


@pytest.mark.django_db
def test_has_policy_role(user: User) -> None:
    ops_only = policy(roles="ops,auditor")
    problem = refusal(HasPolicyRole(), gate_request(policy=ops_only, user=user))
    assert isinstance(problem, PermissionDenied)
    assert problem.detail == "This endpoint requires one of the roles: ops, auditor."
    role_grant(user=user, role_name="auditor")
    assert admitted(HasPolicyRole(), gate_request(policy=ops_only, user=user))
    assert isinstance(refusal(HasPolicyRole(), gate_request(policy=ops_only)), NotAuthenticated)


@pytest.mark.django_db
def test_has_policy_scopes(user: User) -> None:
    key, _ = api_key_create(owner=user, scopes=["jobs:read"])
    needs_run = policy(Endpoint.JOBS_SYNC)
    problem = refusal(HasPolicyScopes(), gate_request(policy=needs_run, user=user, key=key))
    assert isinstance(problem, PermissionDenied)
    assert problem.detail == "The API key lacks a scope this endpoint requires: jobs:run."
    assert admitted(HasPolicyScopes(), gate_request(policy=policy(Endpoint.JOBS_READ), user=user, key=key))


@pytest.mark.django_db
def test_mfa_verified(user: User) -> None:
    mfa = policy(mfa_required=True)
    problem = refusal(MfaVerified(), gate_request(policy=mfa, user=user))
    assert isinstance(problem, MfaRequired)
    assert "enrol a TOTP device" in problem.detail
    confirmed_device(user)
    problem = refusal(MfaVerified(), gate_request(policy=mfa, user=user))
    assert problem.detail == "Send a code of your TOTP device in the X-MFA-Code header."
    assert admitted(MfaVerified(), gate_request(policy=policy(), user=user))


def test_anonymous_budget_throttle(settings) -> None:
    settings.ANONYMOUS_BUDGET = 1
    assert admitted(AnonymousBudgetThrottle(), gate_request(policy=policy()))
    problem = refusal(AnonymousBudgetThrottle(), gate_request(policy=policy()))
    assert isinstance(problem, RateLimited)
    assert problem.extra["limit"]["policy"] == "anonymous-budget"
    assert problem.headers["Retry-After"]


@pytest.mark.django_db
def test_policy_rate_throttle_sets_headers_and_refuses(user: User) -> None:
    limited = policy(rate_limit_algorithm=RateLimitAlgorithm.FIXED_WINDOW, rate_limit=1, rate_window=60)
    clear_of_window_edge(60)
    request = gate_request(policy=limited, user=user)
    assert admitted(PolicyRateThrottle(), request)
    assert request.rate_limit_headers["RateLimit-Policy"] == '"account.read";q=1;w=60'
    request = gate_request(policy=limited, user=user)
    problem = refusal(PolicyRateThrottle(), request)
    assert isinstance(problem, RateLimited)
    assert problem.extra["limit"] == {
        "policy": "account.read",
        "algorithm": "fixed_window",
        "key": "user",
        "quota": 1,
        "window": 60,
    }
    assert request.rate_limit_headers["RateLimit"].startswith('"account.read";r=0;t=')


# --- limiters in one round trip ------------------------------------------------------------------------


def test_limiters_run_in_order_and_a_refused_call_spends_nothing_after_the_refusal() -> None:
    first = Limiter(algorithm=RateLimitAlgorithm.FIXED_WINDOW, key="first", limit=1, window=10)
    second = Limiter(algorithm=RateLimitAlgorithm.TOKEN_BUCKET, key="second", limit=5, window=10, refill_rate=5)
    assert [d.allowed for d in rate_limit_hit_all([first, second], now_ms=1_000)] == [True, True]
    assert [d.allowed for d in rate_limit_hit_all([first, second], now_ms=1_000)] == [False]
    assert rate_limit_hit_all([second], now_ms=1_000)[0].remaining == 3  # one token each admitted call


def test_the_limiter_script_is_reloaded_after_redis_forgets_it() -> None:
    limiter = {"algorithm": RateLimitAlgorithm.FIXED_WINDOW, "key": "reload", "limit": 5, "window": 10}
    assert rate_limit_hit(**limiter).remaining == 4
    get_redis().script_flush()  # what a Redis restart does: the next EVALSHA answers NOSCRIPT
    assert rate_limit_hit(**limiter).remaining == 3


# --- the credentials cache ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_policy_change_keeps_cached_credentials(user: User, django_assert_num_queries: Callable) -> None:
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    assert api_key_get_active(raw_key=raw_key) is not None
    settings_cache.changed()
    with django_assert_num_queries(0):
        assert api_key_get_active(raw_key=raw_key) is not None


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_policies")
def test_every_change_to_a_caller_takes_effect_in_this_process_at_once(user: User) -> None:
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    client = APIClient(**bearer(raw_key))
    set_policy(Endpoint.ACCOUNT_READ, roles="ops")
    assert client.get("/api/v1/me/").status_code == 403
    role_grant(user=user, role_name="ops")
    assert client.get("/api/v1/me/").status_code == 200
    role_revoke(user=user, role_name="ops")
    assert client.get("/api/v1/me/").status_code == 403
    user.roles.add(Role.objects.get(name="ops"))
    set_policy(Endpoint.ACCOUNT_READ, roles="", ip_allowlist=True)
    assert client.get("/api/v1/me/").status_code == 403
    entry = ip_allow_entry_create(cidr="127.0.0.0/8", api_key=key)
    assert client.get("/api/v1/me/").status_code == 200
    IpAllowEntry.objects.get(pk=entry.pk).delete()
    assert client.get("/api/v1/me/").status_code == 403
    set_policy(Endpoint.ACCOUNT_READ, ip_allowlist=False, mfa_required=True)
    assert "enrol" in client.get("/api/v1/me/").json()["detail"]
    confirmed_device(user)
    assert "enrol" not in client.get("/api/v1/me/").json()["detail"]
    set_policy(Endpoint.ACCOUNT_READ, mfa_required=False)
    assert client.get("/api/v1/me/").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/api/v1/me/").status_code == 401
    user.is_active = True
    user.save()
    assert client.get("/api/v1/me/").status_code == 200
    key.expires_at = timezone.now()  # an admin edit
    key.save()
    assert client.get("/api/v1/me/").status_code == 401


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_policies")
def test_an_accepted_mfa_code_keeps_cached_credentials(user: User, django_assert_num_queries: Callable) -> None:
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    device = confirmed_device(user)
    set_policy(Endpoint.ACCOUNT_READ, mfa_required=True)
    client = APIClient(**bearer(raw_key))
    assert client.get("/api/v1/me/", HTTP_X_MFA_CODE=totp_code(device)).status_code == 200  # saves the device
    with django_assert_num_queries(0):
        assert api_key_get_active(raw_key=raw_key) is not None


@pytest.mark.django_db
def test_revocation_in_the_admin_takes_effect_at_once(user: User, make_user: Callable[..., User]) -> None:
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    client = APIClient(**bearer(raw_key))
    assert client.get("/api/v1/me/").status_code == 200
    staff = make_user("staff", is_staff=True, is_superuser=True)
    request = RequestFactory().post("/admin/")
    request.user = staff
    request._messages = _Messages()
    key_admin = admin_site._registry[ApiKey]
    key_admin.revoke(request, ApiKey.objects.filter(pk=key.pk))
    assert client.get("/api/v1/me/").status_code == 401


class _Messages:
    """The admin's message storage, which a bare RequestFactory request lacks."""

    def add(self, *args: Any) -> None:
        pass


@pytest.mark.django_db(transaction=True)
def test_a_revocation_reaches_every_server_process_within_the_check_interval(server_url: str, user: User) -> None:
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    interval = 0.2  # conftest.subprocess_env's POLICY_CHECK_INTERVAL
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {raw_key}"}, timeout=5) as http:
        # Enough calls that both gunicorn workers cache the key.
        assert {http.get("/api/v1/me/").status_code for _ in range(20)} == {200}
        api_key_revoke(prefix=key.prefix)
        revoked_at = time.monotonic()
        wait_until(lambda: http.get("/api/v1/me/").status_code == 401, timeout=5, interval=0.01)
        assert time.monotonic() - revoked_at < interval + 0.5  # the interval, and a request's time
        assert {http.get("/api/v1/me/").status_code for _ in range(20)} == {401}


# --- the gate's budget ----------------------------------------------------------------------------------


class GateProbe(EndpointView):
    """Only the gate: a rate-limited policy (jobs.sync's token bucket) and a handler that reads nothing."""

    endpoint = Endpoint.JOBS_SYNC

    def get(self, request: Request) -> Response:
        return Response({})


class CompatGateProbe(GateProbe):
    """An authenticated caller of a compatible route counts against two limiters: compat.sync's and jobs.sync's."""

    endpoint = Endpoint.COMPAT_SYNC


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("probe", "policies"),
    [
        (GateProbe, '"jobs.sync";q=2000;w=60'),
        (CompatGateProbe, '"compat.sync";q=1200;w=60, "jobs.sync";q=2000;w=60'),
    ],
)
def test_the_gate_costs_no_sql_and_one_redis_round_trip(
    probe: type[EndpointView], policies: str, user: User, settings, django_assert_max_num_queries: Callable
) -> None:
    settings.POLICY_CHECK_INTERVAL = 60  # the caches' version checks (one GET each per interval) are not due
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    view = probe.as_view()
    assert view(factory.get("/", **bearer(raw_key))).status_code == 200
    with django_assert_max_num_queries(0), redis_round_trips() as trips:
        response = view(factory.get("/", **bearer(raw_key)))
    assert response.status_code == 200
    assert response["RateLimit-Policy"] == policies
    assert trips == ["EVALSHA"]
