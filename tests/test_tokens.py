"""Short-lived JWT bearer tokens: minted from an API key (its scopes, dying with it) or an MFA-verified session."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import SCOPES, ApiKey, User
from accounts.services import api_key_create, api_key_revoke
from tests.access_helpers import confirmed_device, totp_code
from tests.conftest import bearer

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}


pytestmark = pytest.mark.usefixtures("fresh_policies")


def mint(client: APIClient | Client) -> dict:
    response = client.post("/api/v1/auth/token/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def with_token(token: str) -> APIClient:
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.mark.django_db
def test_a_token_carries_its_keys_scopes_and_dies_with_the_key(user: User) -> None:
    key, raw_key = api_key_create(owner=user, scopes=["jobs:read"])
    minted = mint(APIClient(**bearer(raw_key)))
    assert minted["token_type"] == "Bearer" and minted["scopes"] == ["jobs:read"]
    assert 0 < minted["expires_in"] <= 300
    token = with_token(minted["access"])
    assert token.get("/api/v1/jobs/").status_code == 200
    assert token.get("/api/v1/me/").json()["scopes"] == ["jobs:read"]
    assert token.post("/api/v1/jobs/sync/", HASH, format="json").json()["code"] == "permission_denied"

    # Scopes only narrow: widening the key later gives the token nothing more, narrowing takes effect at once.
    ApiKey.objects.filter(pk=key.pk).update(scopes="jobs:read,jobs:run")
    assert token.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 403
    ApiKey.objects.filter(pk=key.pk).update(scopes="credits:read")
    assert token.get("/api/v1/jobs/").status_code == 403

    api_key_revoke(prefix=key.prefix)
    refused = token.get("/api/v1/me/")
    assert refused.status_code == 401 and refused.json()["code"] == "not_authenticated"


@pytest.mark.django_db
def test_expired_keys_expired_and_forged_tokens_answer_like_a_bad_key(user: User) -> None:
    key, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    token = mint(APIClient(**bearer(raw_key)))["access"]
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    bad_key = APIClient(HTTP_AUTHORIZATION="Bearer jsk_0000.nothing").get("/api/v1/me/")
    expired = AccessToken(token)
    expired.set_exp(lifetime=-timedelta(seconds=1))
    head, body, signature = token.split(".")
    for presented in (token, str(expired), f"{head}.{body}.{signature[:-2]}AA", "a.b.c"):
        answer = with_token(presented).get("/api/v1/me/")
        assert (answer.status_code, answer.content) == (401, bad_key.content), presented


@pytest.mark.django_db
def test_a_token_cannot_mint_another(user: User) -> None:
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    token = mint(APIClient(**bearer(raw_key)))["access"]
    assert with_token(token).post("/api/v1/auth/token/").json()["code"] == "permission_denied"


@pytest.mark.django_db
def test_a_session_mints_only_once_signed_in_with_a_totp_code(user: User) -> None:
    browser = Client()
    assert browser.post("/api-auth/login/", {"username": user.username, "password": "pw"}).status_code == 302
    refused = browser.post("/api/v1/auth/token/", HTTP_ACCEPT="application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"  # no device: no MFA

    device = confirmed_device(user)
    verified = Client()
    signed_in = verified.post(
        "/api-auth/login/",
        {
            "username": user.username,
            "password": "pw",
            "otp_device": device.persistent_id,
            "otp_token": totp_code(device),
        },
    )
    assert signed_in.status_code == 302
    minted = mint(verified)
    assert minted["scopes"] == list(SCOPES)
    assert with_token(minted["access"]).post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200
