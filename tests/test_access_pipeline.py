"""Issue 13's access findings, one test each: the compatible routes, anonymous callers, /me, MFA throttling."""

from collections.abc import Callable

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import SCOPES, EndpointPolicy, User
from accounts.services import api_key_create, ip_allow_entry_create
from credits.selectors import credit_balance
from jobs.models import Job, WebhookSecret
from jobs.webhooks import webhook_signing_secrets
from tests.access_helpers import (
    COMPAT_POLICIES,
    confirmed_device,
    open_compat_to_anonymous,
    set_policy,
    totp_code,
    wrong_code,
)
from tests.conftest import bearer

HELLO = {"data": "hello", "iterations": 10}


pytestmark = pytest.mark.usefixtures("fresh_policies")


def keyed(user: User, scopes: list[str] | tuple[str, ...] = SCOPES, address: str = "127.0.0.1") -> APIClient:
    _, raw_key = api_key_create(owner=user, scopes=list(scopes))
    return APIClient(**bearer(raw_key), REMOTE_ADDR=address)


def anonymous(address: str) -> APIClient:
    return APIClient(REMOTE_ADDR=address)


@pytest.mark.django_db
def test_a_key_gets_nothing_through_the_compat_routes_that_the_api_would_refuse(user: User) -> None:
    balance = credit_balance(user=user)
    credits_only = keyed(user, ["credits:read"])
    refused = credits_only.post("/sync", HELLO, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert credits_only.post("/async", HELLO, format="json").status_code == 403
    assert credits_only.get("/requests").status_code == 403  # jobs.read wants jobs:read
    assert not Job.objects.exists() and credit_balance(user=user) == balance

    reader = keyed(user, ["jobs:read"])
    assert reader.get("/requests").status_code == 200
    assert reader.post("/sync", HELLO, format="json").status_code == 403

    # The owner's IP allowlist on the API policy holds on /sync too.
    set_policy("jobs.sync", ip_allowlist=True)
    ip_allow_entry_create(cidr="10.0.0.0/8", user=user)
    outside = keyed(user).post("/sync", HELLO, format="json")
    assert outside.status_code == 403 and outside.json()["code"] == "ip_not_allowed"
    assert keyed(user, address="10.1.2.3").post("/sync", HELLO, format="json").status_code == 200

    # So does its MFA requirement.
    set_policy("jobs.sync", mfa_required=True)
    device = confirmed_device(user)
    without_code = keyed(user, address="10.1.2.3").post("/sync", HELLO, format="json")
    assert without_code.status_code == 401 and without_code.json()["code"] == "mfa_required"
    with_code = keyed(user, address="10.1.2.3")
    with_code.credentials(**with_code._credentials, HTTP_X_MFA_CODE=totp_code(device))
    assert with_code.post("/sync", HELLO, format="json").status_code == 200


@pytest.mark.django_db
def test_compat_calls_count_against_the_api_rate_limit_of_the_same_action(user: User) -> None:
    set_policy("jobs.sync", rate_limit_algorithm="fixed_window", rate_limit=1, rate_window=60)
    client = keyed(user)
    assert client.post("/api/v1/jobs/sync/", {"kind": "hash", "input": HELLO}, format="json").status_code == 200
    limited = client.post("/sync", HELLO, format="json")
    assert limited.status_code == 429 and limited.json()["limit"]["policy"] == "jobs.sync"
    assert '"compat.sync"' in limited["RateLimit"] and '"jobs.sync"' in limited["RateLimit"]


@pytest.mark.django_db
def test_anonymous_access_is_a_policy_switch_off_by_default_and_on_in_the_demo(user: User) -> None:
    for path in ("/sync", "/async"):
        refused = anonymous("203.0.113.9").post(path, HELLO, format="json")
        assert refused.status_code == 401 and refused.json()["code"] == "not_authenticated", path
    assert anonymous("203.0.113.9").get("/requests").status_code == 401
    assert not Job.objects.exists()

    open_compat_to_anonymous()
    assert anonymous("203.0.113.9").post("/sync", HELLO, format="json").status_code == 200
    set_policy("compat.sync", auth_required=True)  # staff turn it off again
    assert anonymous("203.0.113.9").post("/sync", HELLO, format="json").status_code == 401

    EndpointPolicy.objects.filter(name__in=COMPAT_POLICIES).delete()
    call_command("seed_demo", stdout=open("/dev/null", "w"))  # noqa: SIM115 - the run command's demo data
    assert set(EndpointPolicy.objects.filter(name__in=COMPAT_POLICIES).values_list("auth_required", flat=True)) == {
        False
    }


@pytest.mark.django_db
def test_anonymous_callers_see_only_the_requests_made_from_their_address(user: User) -> None:
    open_compat_to_anonymous()
    alice, bob = anonymous("203.0.113.1"), anonymous("2001:db8::2")
    alices = alice.post("/async", {**HELLO, "callback_url": "https://example.org/a?token=1"}, format="json")
    bobs = bob.post("/async", HELLO, format="json")
    alice_id, bob_id = alices.json()["request_id"], bobs.json()["request_id"]
    mine = keyed(user).post("/async", HELLO, format="json").json()["request_id"]

    listing = alice.get("/requests").json()
    assert listing["total"] == 1 and [r["request_id"] for r in listing["requests"]] == [alice_id]
    assert [r["request_id"] for r in bob.get("/requests").json()["requests"]] == [bob_id]
    assert alice.get(f"/requests/{alice_id}").status_code == 200
    assert bob.get(f"/requests/{alice_id}").status_code == 404
    assert alice.get(f"/requests/{mine}").status_code == 404  # nor an authenticated user's
    assert [r["request_id"] for r in keyed(user).get("/requests").json()["requests"]] == [mine]
    assert anonymous("198.51.100.1").get("/requests").json() == {"total": 0, "requests": []}


@pytest.mark.django_db
def test_the_anonymous_budget_is_global_and_spares_authenticated_callers(user: User, settings) -> None:
    open_compat_to_anonymous()
    settings.ANONYMOUS_BUDGET = 3
    for n in range(3):
        assert anonymous(f"203.0.113.{n + 1}").post("/sync", HELLO, format="json").status_code == 200
    spent = anonymous("203.0.113.99").post("/sync", HELLO, format="json")
    assert spent.status_code == 429 and spent.json()["limit"]["policy"] == "anonymous-budget"
    assert int(spent["Retry-After"]) >= 1
    assert keyed(user).post("/sync", HELLO, format="json").status_code == 200


@pytest.mark.django_db
def test_anonymous_callers_do_not_spend_an_authenticated_callers_limit_at_the_same_address(user: User) -> None:
    open_compat_to_anonymous()
    set_policy("compat.read", auth_required=False, rate_limit=2)
    for _ in range(2):
        assert anonymous("192.0.2.7").get("/requests").status_code == 200
    assert anonymous("192.0.2.7").get("/requests").status_code == 429
    assert keyed(user, address="192.0.2.7").get("/requests").status_code == 200


@pytest.mark.django_db
def test_me_writes_answer_to_the_account_write_policy(user: User) -> None:
    client = keyed(user)
    assert client.post("/api/v1/me/webhook-secret/").status_code == 201
    set_policy("account.write", ip_allowlist=True)
    outside = client.post("/api/v1/me/webhook-secret/")
    assert outside.status_code == 403 and outside.json()["code"] == "ip_not_allowed"
    assert client.post("/api/v1/me/mfa/totp/").json()["code"] == "ip_not_allowed"
    set_policy("account.write", ip_allowlist=False, mfa_required=True)
    device = confirmed_device(user)
    assert client.post("/api/v1/me/webhook-secret/").json()["code"] == "mfa_required"
    with_code = keyed(user)
    with_code.credentials(**with_code._credentials, HTTP_X_MFA_CODE=totp_code(device))
    assert with_code.post("/api/v1/me/webhook-secret/").status_code == 201
    set_policy("account.write", mfa_required=False, rate_limit_algorithm="fixed_window", rate_limit=2)
    statuses = [client.post("/api/v1/me/webhook-secret/").status_code for _ in range(3)]
    assert statuses == [201, 201, 429]
    set_policy("account.read", ip_allowlist=True)
    assert client.get("/api/v1/me/").json()["code"] == "ip_not_allowed"


@pytest.mark.django_db
def test_at_most_two_webhook_secrets_sign_however_often_one_rotates(user: User) -> None:
    client = keyed(user)
    issued = [client.post("/api/v1/me/webhook-secret/").json()["secret"] for _ in range(12)]
    assert webhook_signing_secrets(user_id=user.pk) == [issued[-1], issued[-2]]  # the current one and the previous one
    assert WebhookSecret.objects.filter(user=user).count() == 12  # retired, not deleted


@pytest.mark.django_db
def test_wrong_mfa_codes_from_a_stolen_key_do_not_lock_the_owner_out(user: User, settings) -> None:
    settings.MFA_FAILURE_RATE = "3/5m"
    set_policy("jobs.read", mfa_required=True)
    device = confirmed_device(user)
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))

    def call(address: str, code: str) -> tuple[int, str]:
        response = APIClient(**bearer(raw_key), REMOTE_ADDR=address, HTTP_X_MFA_CODE=code).get("/api/v1/jobs/")
        return response.status_code, response.json().get("code", "") if response.status_code != 200 else ""

    for _ in range(3):
        assert call("203.0.113.66", wrong_code(device)) == (401, "mfa_invalid")
    assert call("203.0.113.66", totp_code(device))[0] == 429  # the guesser is throttled, right code or not
    assert call("10.0.0.5", totp_code(device)) == (200, "")  # the owner, elsewhere, is not
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


@pytest.mark.django_db
def test_wrong_mfa_codes_are_also_throttled_per_address_across_keys(make_user: Callable[..., User], settings) -> None:
    settings.MFA_FAILURE_RATE_PER_IP = "4/5m"
    set_policy("jobs.read", mfa_required=True)
    answers = []
    for _ in range(5):
        victim = make_user()
        device = confirmed_device(victim)
        _, raw_key = api_key_create(owner=victim, scopes=list(SCOPES))
        client = APIClient(**bearer(raw_key), REMOTE_ADDR="203.0.113.77", HTTP_X_MFA_CODE=wrong_code(device))
        answers.append(client.get("/api/v1/jobs/").status_code)
    assert answers == [401, 401, 401, 401, 429]


@pytest.mark.django_db
def test_metrics_are_public_by_default_but_staff_can_lock_them_down(user: User, settings) -> None:
    settings.ANONYMOUS_BUDGET = 0  # anonymous job traffic is cut off: monitoring still works
    assert anonymous("192.0.2.1").get("/metrics").status_code == 200
    set_policy("metrics.read", auth_required=True)
    assert anonymous("192.0.2.1").get("/metrics").json()["code"] == "not_authenticated"
    assert keyed(user).get("/metrics").status_code == 200
    set_policy("metrics.read", ip_allowlist=True)
    ip_allow_entry_create(cidr="10.0.0.0/8")
    assert keyed(user).get("/metrics").json()["code"] == "ip_not_allowed"
    assert keyed(user, address="10.0.0.9").get("/metrics").status_code == 200
