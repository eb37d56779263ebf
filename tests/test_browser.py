"""Pages people read, in a real headless Chromium (Debian's package, driven by Playwright; no browser download).

Swagger UI and ReDoc, served from drf-spectacular-sidecar, render every operation, authorize with an API key and
run a sync job without a request leaving 127.0.0.1; the admin fits a 1366 px screen and speaks plain words."""

import fcntl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from playwright.sync_api import BrowserContext, Page, Request, sync_playwright

from accounts.models import SCOPES, User
from accounts.services import api_key_create
from jobs.models import Job, JobMode, JobStatus
from tests.api_operations import schema_operations
from tests.conftest import ROOT, TEST_VAR, gunicorn_server
from tests.processes import required_tool

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Chromium as root in a container with no network beyond 127.0.0.1: no sandbox, no GPU, no calls home."""


@pytest.fixture(scope="module")
def docs_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """A gunicorn of its own, started after collectstatic (WhiteNoise indexes the static files at start-up)."""
    # Under a lock: .ci/run's two sessions reach this at about the same time, and a file being copied is a torn file.
    with (ROOT / "var" / "collectstatic.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    with gunicorn_server("docs-gunicorn") as url:
        yield url


@pytest.fixture
def api_key(user: User) -> str:
    """Created before the browser starts: Playwright's event loop makes Django refuse database calls after."""
    return api_key_create(owner=user, name="swagger", scopes=list(SCOPES))[1]


@pytest.fixture
def browser_context() -> Iterator[BrowserContext]:
    chromium = required_tool("chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield context
        finally:
            context.close()


def _requests_leaving(page: Page, base_url: str) -> list[str]:
    """URLs of other sites the page fetched; requests the page's own policy blocked never left the browser."""
    elsewhere: list[str] = []

    def sent(request: Request) -> None:
        if not request.url.startswith((base_url, "data:", "blob:")):
            elsewhere.append(request.url)

    def blocked(request: Request) -> None:
        if "csp" in (request.failure or "").lower() and request.url in elsewhere:  # Chromium: "csp"
            elsewhere.remove(request.url)

    page.on("request", sent)
    page.on("requestfailed", blocked)
    return elsewhere


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_swagger_ui_renders_authorizes_and_runs_a_sync_job(
    docs_server: str, api_key: str, browser_context: BrowserContext
) -> None:
    page = browser_context.new_page()
    elsewhere = _requests_leaving(page, docs_server)
    page.goto(f"{docs_server}/api/docs/")
    page.wait_for_selector(".opblock", timeout=20_000)
    webhooks = SchemaGenerator().get_schema(request=None, public=True).get("webhooks", {})
    webhook_operations = sum(len(operations) for operations in webhooks.values())
    assert page.locator(".opblock").count() == len(schema_operations()) + webhook_operations

    page.click("button.authorize")
    page.fill(".auth-container input", api_key)
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")

    sync = page.locator(".opblock-post", has=page.locator('[data-path="/api/v1/jobs/sync/"]'))
    sync.locator(".opblock-summary").click()
    sync.locator("button.try-out__btn").click()
    sync.locator("textarea.body-param__text").fill('{"kind": "hash", "input": {"data": "swagger", "iterations": 10}}')
    sync.locator("button.execute").click()
    status = sync.locator(".live-responses-table .response .response-col_status")
    status.first.wait_for(timeout=20_000)
    assert status.first.inner_text().strip() == "200"
    body = sync.locator(".live-responses-table .response .response-col_description pre").first.inner_text()
    assert '"status": "succeeded"' in body
    assert elsewhere == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_redoc_renders_every_operation(docs_server: str, browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    elsewhere = _requests_leaving(page, docs_server)
    page.goto(f"{docs_server}/api/redoc/")
    page.wait_for_load_state("networkidle")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached", timeout=30_000)
    assert page.locator("[data-section-id^='operation/']").count() == len(schema_operations())
    assert elsewhere == []


STAFF_PASSWORD = "staff-password"


@pytest.fixture
def staff_with_a_job(make_user: Any) -> Job:
    """A superuser the server can sign in (PBKDF2: the test settings' MD5 is not among the server's hashers)."""
    hasher = PBKDF2PasswordHasher()
    staff = make_user("staff", is_staff=True, is_superuser=True)
    staff.password = hasher.encode(STAFF_PASSWORD, hasher.salt(), iterations=1000)
    staff.save(update_fields=["password"])
    return Job.objects.create(
        owner=staff,
        endpoint="jobs.async",
        kind="fetch",
        mode=JobMode.ASYNC,
        status=JobStatus.SUCCEEDED,
        input={"url": "https://example.org/" + "a-long-path/" * 8},
        callback_url="https://example.org/hook",
        result={"status_code": 200},
        cost=1,
        attempts=1,
        expires_at=timezone.now() + timedelta(days=30),
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_admin_fits_1366_px_and_names_things_plainly(
    docs_server: str, staff_with_a_job: Job, browser_context: BrowserContext
) -> None:
    page = browser_context.new_page()
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto(f"{docs_server}/admin/login/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#content-main")
    assert page.title().endswith("| Jobsite admin")
    index = page.inner_text("#content-main")
    for raw in ("DJANGO_RQ", "OTP_TOTP", "Django_Rq", "Otp_Totp"):
        assert raw not in index
    assert "QUEUES (RQ DASHBOARD)" in index.upper() and "TWO-FACTOR DEVICES (TOTP)" in index.upper()

    page.goto(f"{docs_server}/admin/jobs/job/")
    row = page.locator("#result_list tbody tr").first
    assert row.locator("th a").inner_text() == str(staff_with_a_job.id)[:8]
    table_width = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right")
    assert table_width <= page.evaluate("document.querySelector('#changelist-filter').getBoundingClientRect().left")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    assert max(cell.bounding_box()["height"] for cell in row.locator("td, th").all()) < 40  # one line per row
    page.screenshot(path=str(TEST_VAR / "admin-job-list-1366.png"))

    page.goto(f"{docs_server}/admin/jobs/job/{staff_with_a_job.id}/change/")
    assert page.locator("input[name=_save], input[name=_continue], input[name=_addanother]").count() == 0
    assert "View job" in page.inner_text("#content")

    page.goto(f"{docs_server}/admin/accounts/endpointpolicy/add/")
    form = page.inner_text("#content-main")
    for label in ("IP allowlist", "MFA required", "Idempotency TTL (s)", "Rate-limit algorithm", "Required scopes"):
        assert label in form
    help_texts = page.locator(".form-row .help").count()
    assert help_texts == page.locator(".form-row").count() - 1  # every field but the read-only updated date
