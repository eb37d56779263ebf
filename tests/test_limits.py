"""GET /api/v1/me/limits/: what remains of each limit, caps in use and the balance, without spending any."""

import pytest
from rest_framework.test import APIClient

from accounts.models import SCOPES, User
from accounts.policies import ENDPOINT_DEFAULTS
from accounts.services import api_key_create
from credits.selectors import credit_balance
from tests.access_helpers import set_policy
from tests.conftest import bearer

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}


pytestmark = pytest.mark.usefixtures("fresh_policies")


@pytest.mark.django_db
def test_limits_show_what_remains_and_reading_them_spends_nothing(user: User) -> None:
    set_policy("jobs.sync", rate_limit_algorithm="fixed_window", rate_limit=5, rate_window=600)
    set_policy("jobs.read", rate_limit_algorithm="token_bucket", rate_limit=3, rate_window=3600, refill_rate=1)
    set_policy("jobs.async", max_concurrent_per_user=7)
    _, raw_key = api_key_create(owner=user, scopes=list(SCOPES))
    client = APIClient(**bearer(raw_key))
    for _ in range(2):
        assert client.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200
    assert client.get("/api/v1/jobs/").status_code == 200
    fresh = {"kind": "hash", "input": {"data": "not cached", "iterations": 10}}
    assert client.post("/api/v1/jobs/async/", fresh, format="json").status_code == 202  # no worker: stays queued

    for _ in range(2):  # twice: a read of the limits is not a call against them
        limits = client.get("/api/v1/me/limits/").json()
        by_name = {endpoint["name"]: endpoint for endpoint in limits["endpoints"]}
        assert set(by_name) == set(ENDPOINT_DEFAULTS)
        sync = by_name["jobs.sync"]["rate_limit"]
        assert (sync["algorithm"], sync["quota"], sync["remaining"], sync["window"]) == ("fixed_window", 5, 3, 600)
        assert 0 < sync["reset"] <= 600
        assert by_name["jobs.read"]["rate_limit"]["remaining"] == 2
        assert by_name["jobs.async"]["concurrency"] == {
            "max_per_user": 7,
            "max_global": None,
            "in_use_by_you": 1,
            "in_use_global": 1,
        }
        assert by_name["jobs.async"]["max_priority"] == "normal"  # what a submission may ask
        assert by_name["account.read"]["rate_limit"] is None
        untouched = by_name["compat.sync"]["rate_limit"]
        assert (untouched["remaining"], untouched["reset"]) == (untouched["quota"], 0)
        assert limits["balance"] == credit_balance(user=user)
    # The next real call finds exactly what the limits said remained.
    assert '"jobs.sync";r=2;' in client.post("/api/v1/jobs/sync/", HASH, format="json")["RateLimit"]
