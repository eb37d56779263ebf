"""API keys, MFA, IP allowlists, the account commands and `manage.py policy`."""

import base64
import hashlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import SCOPES, ApiKey, EndpointPolicy, IpAllowEntry, Role, User
from accounts.services import api_key_create, api_key_revoke
from jobs.models import KindSettings
from jobsite import client_ip
from tests.access_helpers import set_policy, totp_code, wrong_code
from tests.conftest import ROOT, bearer, subprocess_env
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("fresh_policies")


def keyed_client(user: User, scopes: list[str] | tuple[str, ...] = SCOPES, **headers: str) -> tuple[APIClient, str]:
    _, raw_key = api_key_create(owner=user, scopes=list(scopes))
    client = APIClient()
    client.credentials(**bearer(raw_key), **headers)
    return client, raw_key


@pytest.mark.django_db
def test_api_key_is_not_recoverable_from_its_row(user: User, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("create_api_key", user.username, "--scopes", "jobs:read,jobs:run", "--expires", "7")
    raw_key = capsys.readouterr().out.strip().splitlines()[-1]
    prefix, _, secret = raw_key.partition(".")
    row = ApiKey.objects.filter(prefix=prefix).values().get()
    stored = json.dumps(row, default=str)
    assert secret not in stored and raw_key not in stored
    assert row["key_hash"] not in (
        hashlib.sha256(raw_key.encode()).hexdigest(),
        hashlib.sha256(secret.encode()).hexdigest(),
    )
    assert row["scopes"] == "jobs:read,jobs:run"
    assert timedelta(days=6) < row["expires_at"] - timezone.now() <= timedelta(days=7)
    assert APIClient(**bearer(raw_key)).get("/api/v1/jobs/").status_code == 200


@pytest.mark.django_db
def test_unknown_revoked_expired_and_malformed_keys_are_indistinguishable(user: User) -> None:
    live, live_key = api_key_create(owner=user, scopes=list(SCOPES))
    revoked, revoked_key = api_key_create(owner=user, scopes=list(SCOPES))
    api_key_revoke(prefix=revoked.prefix)
    _, expired_key = api_key_create(owner=user, scopes=list(SCOPES), expires_at=timezone.now() - timedelta(seconds=1))
    forged = f"{live.prefix}.{'A' * 43}"
    answers = set()
    for presented in (revoked_key, expired_key, forged, "jsk_000000000000.nothing", "no-dot-at-all", "é"):
        response = APIClient(HTTP_AUTHORIZATION=f"Bearer {presented}").get("/api/v1/jobs/")
        assert response.status_code == 401
        answers.add((response.content, response["WWW-Authenticate"]))
    assert len(answers) == 1
    assert APIClient(**bearer(live_key)).get("/api/v1/jobs/").status_code == 200


@pytest.mark.django_db
def test_last_used_at_is_written_at_most_once_per_interval(user: User, settings) -> None:
    settings.API_KEY_TOUCH_INTERVAL = timedelta(seconds=1)
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    client = APIClient(**bearer(raw_key))
    client.get("/api/v1/me/")
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        client.get("/api/v1/me/")
    assert not [q for q in queries if q["sql"].startswith("UPDATE") and "accounts_apikey" in q["sql"]]
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - timedelta(minutes=5))

    def touched_again() -> bool:
        client.get("/api/v1/me/")
        key.refresh_from_db()
        return key.last_used_at > first

    wait_until(touched_again, timeout=5)


@pytest.mark.django_db
def test_totp_enrol_confirm_use_once_and_remove(user: User) -> None:
    client, _ = keyed_client(user)
    enrol = client.post("/api/v1/me/mfa/totp/")
    assert enrol.status_code == 201
    assert enrol.json()["provisioning_uri"].startswith("otpauth://totp/Jobsite%3Aalice?secret=")
    assert base64.b64decode(enrol.json()["qr_png"]).startswith(b"\x89PNG\r\n\x1a\n")
    device = user.totpdevice_set.get()
    assert client.get("/api/v1/me/").json()["mfa_enrolled"] is False
    wrong = client.post("/api/v1/me/mfa/totp/confirm/", {"code": wrong_code(device)}, format="json")
    assert wrong.status_code == 400 and wrong.json()["code"] == "validation_error"
    device.throttle_reset()  # django-otp delays the next try after a failure
    assert client.post("/api/v1/me/mfa/totp/confirm/", {"code": totp_code(device)}, format="json").status_code == 200
    assert client.get("/api/v1/me/").json()["mfa_enrolled"] is True
    assert client.post("/api/v1/me/mfa/totp/").status_code == 400  # one device: remove it first

    set_policy("jobs.read", mfa_required=True)
    assert client.get("/api/v1/jobs/").json()["code"] == "mfa_required"
    code = totp_code(device, steps=1)
    assert client.get("/api/v1/jobs/", HTTP_X_MFA_CODE=code).status_code == 200
    replay = client.get("/api/v1/jobs/", HTTP_X_MFA_CODE=code)
    assert (replay.status_code, replay.json()["code"]) == (401, "mfa_invalid")

    assert client.delete("/api/v1/me/mfa/totp/").json()["code"] == "mfa_required"
    assert client.delete("/api/v1/me/mfa/totp/", HTTP_X_MFA_CODE=code).json()["code"] == "mfa_invalid"
    user.totpdevice_set.get().throttle_reset()
    # Accepting the next step's code moved the device's drift (OTP_TOTP_SYNC), so the one after is fresh now.
    assert client.delete("/api/v1/me/mfa/totp/", HTTP_X_MFA_CODE=totp_code(device, steps=2)).status_code == 204
    assert client.get("/api/v1/me/").json()["mfa_enrolled"] is False


@pytest.mark.django_db
def test_me_shows_roles_scopes_and_account_writes_need_their_scope(user: User) -> None:
    call_command("grant_role", user.username, "ops")
    client, _ = keyed_client(user, scopes=["jobs:read"])
    me = client.get("/api/v1/me/").json()
    assert me == {
        "username": "alice",
        "is_staff": False,
        "roles": ["ops"],
        "scopes": ["jobs:read"],
        "mfa_enrolled": False,
        "balance": settings.NEW_USER_CREDITS,
    }
    assert client.post("/api/v1/me/mfa/totp/").json()["code"] == "permission_denied"
    call_command("revoke_role", user.username, "ops")
    assert client.get("/api/v1/me/").json()["roles"] == []


@pytest.mark.django_db
def test_ip_allowlist_per_user_per_key_global_ipv6_and_proxies(user: User, settings: pytest.FixtureRequest) -> None:
    set_policy("jobs.read", ip_allowlist=True)
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    _, other_key = api_key_create(owner=user, scopes=list(SCOPES))

    def status(raw: str, address: str, **headers: str) -> int:
        return APIClient(**bearer(raw), REMOTE_ADDR=address, **headers).get("/api/v1/jobs/").status_code

    assert status(raw_key, "127.0.0.1") == 403  # allowlist on, nothing listed: nobody
    call_command("allow_ip", "2001:db8::/32", "--key", key.prefix)
    assert status(raw_key, "2001:db8::5") == 200
    assert status(other_key, "2001:db8::5") == 403  # the entry belongs to the first key only
    call_command("allow_ip", "10.0.0.0/8", "--user", user.username)
    assert status(other_key, "10.9.8.7") == 200
    assert status(other_key, "::ffff:10.9.8.7") == 200  # IPv4-mapped IPv6 is the IPv4 address
    assert status(other_key, "127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.8.7") == 403  # no trusted proxy: header ignored
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    client_ip._trusted_networks.cache_clear()
    try:
        assert status(other_key, "127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.8.7") == 200
    finally:
        client_ip._trusted_networks.cache_clear()
    call_command("allow_ip", "192.0.2.0/24")
    assert status(other_key, "192.0.2.44") == 200  # global entry
    assert IpAllowEntry.objects.count() == 3
    with pytest.raises(CommandError):
        call_command("allow_ip", "10.0.0.0/33")
    with pytest.raises(CommandError):
        call_command("allow_ip", "10.0.0.0/8", "--user", user.username, "--key", key.prefix)


@pytest.mark.django_db
def test_account_commands_fail_cleanly(user: User) -> None:
    for args in (
        ("create_api_key", "nobody"),
        ("create_api_key", user.username, "--scopes", "jobs:run,root"),
        ("create_api_key", user.username, "--expires", "0"),
        ("revoke_api_key", "jsk_unknown"),
        ("revoke_role", user.username, "never-granted"),
        ("grant_role", "nobody", "ops"),
    ):
        with pytest.raises(CommandError):
            call_command(*args)
    assert ApiKey.objects.count() == 0


@pytest.mark.django_db
def test_no_secret_in_logs_at_debug_level(user: User, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")  # Django's own default config holds it at INFO
    connection.force_debug_cursor = True  # SQL with its parameters goes to the log too
    try:
        client, raw_key = keyed_client(user)
        client.post("/api/v1/me/mfa/totp/")
        device = user.totpdevice_set.get()
        codes = [totp_code(device)]
        client.post("/api/v1/me/mfa/totp/confirm/", {"code": codes[0]}, format="json")
        set_policy("jobs.sync", mfa_required=True)
        codes.append(totp_code(device, steps=1))
        ok = client.post(
            "/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": "x"}}, format="json", HTTP_X_MFA_CODE=codes[1]
        )
        assert ok.status_code == 200
        client.get("/api/v1/jobs/", HTTP_X_MFA_CODE=codes[1])  # a replay: refused and logged as a 401
        codes.append(wrong_code(device))
        client.get("/api/v1/jobs/", HTTP_X_MFA_CODE=codes[2])
        api_key_revoke(prefix=raw_key.partition(".")[0])
        assert client.get("/api/v1/jobs/").status_code == 401
    finally:
        connection.force_debug_cursor = False
    assert any("Unauthorized" in record.getMessage() for record in caplog.records)  # the capture works
    text = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    secret = raw_key.partition(".")[2]
    assert secret not in text
    assert device.key not in text
    for code in codes:
        assert f"'{code}'" not in text and f'"{code}"' not in text and f"={code}" not in text


@pytest.mark.django_db
def test_admin_creates_an_api_key_shown_once(make_user: Callable[..., User]) -> None:
    staff = make_user("root", is_staff=True, is_superuser=True)
    owner = make_user("carol")
    admin = Client()
    admin.force_login(staff)
    response = admin.post(
        "/admin/accounts/apikey/add/", {"owner": owner.pk, "name": "ci", "scopes": ["jobs:run", "jobs:read"]}
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(owner=owner)
    raw_key = response.context["raw_key"]
    assert raw_key.startswith(key.prefix + ".") and raw_key in response.content.decode()
    assert key.scopes == "jobs:run,jobs:read"
    assert raw_key not in admin.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert APIClient(**bearer(raw_key)).get("/api/v1/jobs/").status_code == 200


@pytest.mark.django_db
def test_admin_policy_form_validates(make_user: Callable[..., User]) -> None:
    staff = make_user("root", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(staff)
    policy = set_policy("jobs.read")
    url = f"/admin/accounts/endpointpolicy/{policy.pk}/change/"
    form = {
        "enabled": "on",
        "auth_required": "on",
        "roles": "",
        "scopes": "jobs:read,bogus:scope",
        "rate_limit_algorithm": "token_bucket",
        "rate_limit_key": "user",
        "rate_limit": "0",
        "rate_window": "60",
        "refill_rate": "60",
        "max_concurrent_per_user": "0",
        "max_concurrent_global": "0",
        "queue_max_depth": "100",
        "idempotency_ttl": "60",
        "batch_max_jobs": "1000",
        "upload_max_bytes": "1000000",
        "max_schedule_ahead": "3600",
        "max_priority": "normal",
        "max_wait_seconds": "30",
        "max_streams_per_user": "5",
    }
    refused = admin.post(url, form)
    assert refused.status_code == 200
    assert set(refused.context["adminform"].form.errors) == {"scopes", "rate_limit"}
    assert admin.post(url, {**form, "scopes": "jobs:read", "rate_limit": "5"}).status_code == 302
    assert EndpointPolicy.objects.get(name="jobs.read").rate_limit == 5


@pytest.mark.django_db
def test_policy_command_validates_like_the_admin_and_changes_nothing_on_error(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("policy", "set", "jobs.sync", "rate_limit=7", "ip_allowlist=true", "roles=")
    policy = EndpointPolicy.objects.get(name="jobs.sync")
    assert (policy.rate_limit, policy.ip_allowlist) == (7, True)
    for bad in (
        ("nope", "enabled=false"),
        ("jobs.sync", "colour=blue"),
        ("jobs.sync", "enabled=perhaps"),
        ("jobs.sync", "rate_limit=-1"),
        ("jobs.sync", "rate_limit_algorithm=leaky"),
        ("jobs.sync", "roles=ghosts"),
        ("jobs.sync", "rate_limit=9", "scopes=jobs:run,admin"),
        ("kind.hash", "cost=x"),
        ("kind.stats", "cache_algorithm=lru"),
        ("kind.nope", "cost=1"),
        ("jobs.sync", "no-equals-sign"),
        ("jobs.batch", "batch_max_jobs=0"),
        ("jobs.batch", "upload_max_bytes=0"),
    ):
        with pytest.raises(CommandError):
            call_command("policy", "set", *bad)
    assert EndpointPolicy.objects.get(name="jobs.sync").rate_limit == 7

    capsys.readouterr()
    call_command("policy", "export")
    exported = json.loads(capsys.readouterr().out)
    assert set(exported) >= {"jobs.sync", "compat.read", "kind.hash", "kind.fetch", "kind.stats"}
    exported["jobs.sync"]["rate_limit"] = 11
    exported["kind.hash"]["cost"] = 3
    good = tmp_path / "good.json"
    good.write_text(json.dumps(exported))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**exported, "kind.stats": {"time_limit": 0}, "jobs.async": {"rate_limit": 99}}))
    bad.write_text(json.dumps({**exported, "jobs.read": {"roles": "auditors"}, "kind.stats": {"time_limit": 0}}))
    with pytest.raises(CommandError, match="time_limit"):
        call_command("policy", "import", str(bad))
    assert EndpointPolicy.objects.get(name="jobs.sync").rate_limit == 7  # nothing of the bad file applied
    assert not Role.objects.filter(name="auditors").exists()
    good.write_text(json.dumps({**exported, "jobs.read": {**exported["jobs.read"], "roles": "auditors"}}))
    call_command("policy", "import", str(good))  # into a database that has no such role yet
    assert EndpointPolicy.objects.get(name="jobs.sync").rate_limit == 11
    assert EndpointPolicy.objects.get(name="jobs.read").role_list == ["auditors"]
    assert KindSettings.objects.get(kind="hash").cost == 3
    capsys.readouterr()
    call_command("policy", "show", "kind.hash")
    assert json.loads(capsys.readouterr().out)["cost"] == 3


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_policy_set_in_another_process_is_enforced_by_the_server_within_a_second(server_url: str, user: User) -> None:
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    headers = {"Authorization": f"Bearer {raw_key}"}
    with httpx.Client(base_url=server_url, headers=headers, timeout=5) as http:
        assert http.get("/api/v1/jobs/").status_code == 200

        def policy_set(*assignments: str) -> float:
            command = [sys.executable, "manage.py", "policy", "set", "jobs.read", *assignments]
            subprocess.run(command, cwd=ROOT, env=subprocess_env(), check=True, capture_output=True)
            return time.monotonic()

        done = policy_set("enabled=false")
        refused = wait_until(
            lambda: (r := http.get("/api/v1/jobs/")).status_code == 403 and r, timeout=1.0, interval=0.02
        )
        assert refused.json()["code"] == "permission_denied"
        assert time.monotonic() - done < 1.0
        # Both gunicorn workers see it: every request from now on is refused.
        assert {http.get("/api/v1/jobs/").status_code for _ in range(20)} == {403}
        done = policy_set("enabled=true", "scopes=jobs:read,credits:read")
        wait_until(lambda: http.get("/api/v1/jobs/").status_code == 200, timeout=1.0, interval=0.02)
        assert time.monotonic() - done < 1.0
