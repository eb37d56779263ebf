import json
import secrets
import uuid
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from accounts.models import SCOPES, ApiKey, EndpointPolicy, User
from accounts.policies import ENDPOINT_DEFAULTS
from accounts.selectors import api_key_get_active
from accounts.services import api_key_create, api_key_revoke
from credits.selectors import credit_balance
from credits.services import credit_grant
from jobs.compat import COMPAT_ASYNC, COMPAT_READ, COMPAT_SYNC
from jobs.views import JobSyncView
from jobs.webhooks import webhook_secret_rotate, webhook_secrets_active

DEMO_ADMIN = "admin"
DEMO_USER = "demo"
DEMO_KEY_NAME = "demo (seed_demo)"
DEMO_CREDITS = 1_000_000
"""The demo user's balance is topped up to this, enough for long load-generator runs."""


class Command(BaseCommand):
    help = "Create (or refresh) the demo admin and demo user, and print how to reach the service."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL the service listens on.")
        parser.add_argument(
            "--credentials",
            type=Path,
            help="JSON file (created 0600) keeping the passwords, demo key and webhook secret across runs: values "
            "still valid are reused, the others created and stored. Without it every run creates new ones.",
        )

    def handle(self, *args: Any, url: str, credentials: Path | None, **options: Any) -> None:
        kept: dict[str, str] = json.loads(credentials.read_text()) if credentials and credentials.exists() else {}
        admin, _ = User.objects.get_or_create(username=DEMO_ADMIN, defaults={"is_staff": True, "is_superuser": True})
        admin_password = _password(admin, kept.get("admin_password"))
        demo, _ = User.objects.get_or_create(username=DEMO_USER)
        user_password = _password(demo, kept.get("user_password"))
        demo_key = kept.get("demo_key", "")
        live_key = api_key_get_active(raw_key=demo_key) if demo_key else None
        if live_key is None or live_key.owner_id != demo.pk:
            for old_key in ApiKey.objects.filter(owner=demo, name=DEMO_KEY_NAME, revoked_at__isnull=True):
                api_key_revoke(prefix=old_key.prefix)  # one live demo key: the one printed below
            _, demo_key = api_key_create(owner=demo, name=DEMO_KEY_NAME, scopes=list(SCOPES))
        shortfall = DEMO_CREDITS - credit_balance(user=demo)
        if shortfall > 0:
            credit_grant(user=demo, amount=shortfall, reason="demo top-up", posting_key=f"demo:{uuid.uuid4()}")
        webhook_secret = kept.get("webhook_secret", "")
        # Read without creating: a first secret made on the spot would sign beside the new one for a day.
        if webhook_secrets_active(user_id=demo.pk, now=timezone.now())[:1] != [webhook_secret]:
            webhook_secret = webhook_secret_rotate(user=demo)
        if credentials:
            credentials.touch(mode=0o600)
            values = {
                "admin_password": admin_password,
                "user_password": user_password,
                "demo_key": demo_key,
                "webhook_secret": webhook_secret,
            }
            credentials.write_text(json.dumps(values, indent=2) + "\n")
        for name in (COMPAT_SYNC, COMPAT_ASYNC, COMPAT_READ):
            # The demo opens the compatible routes to anonymous callers, as the original backend was.
            policy, _ = EndpointPolicy.objects.get_or_create(name=name, defaults=ENDPOINT_DEFAULTS[name])
            policy.auth_required = False
            policy.save()
        # Load runs from one demo key (loadgen -c 20..50) would otherwise meet the per-user sync cap at once.
        sync_policy, _ = EndpointPolicy.objects.get_or_create(
            name=JobSyncView.endpoint, defaults=ENDPOINT_DEFAULTS[JobSyncView.endpoint]
        )
        sync_policy.max_concurrent_per_user = 0
        sync_policy.save()
        lines = [
            f"API          {url}/api/v1/",
            f"Swagger UI   {url}/api/docs/   (ReDoc: {url}/api/redoc/)",
            f"Admin        {url}/admin/   (user {DEMO_ADMIN}, password {admin_password})",
            f"RQ dashboard {url}/admin/rq/",
            f"Metrics      {url}/metrics",
            f"Health       {url}/healthz",
            f"Demo user    {DEMO_USER} / {user_password}",
            f"Demo API key {demo_key}   (Authorization: Bearer <key>)",
            f"Demo webhook signing secret {webhook_secret}   (verifies the demo user's callbacks)",
            f"Demo credits {credit_balance(user=demo)}",
            "Anonymous    /sync /async /requests open to anonymous callers (demo: compat.* auth_required=false)",
            "Sync cap     none per user, for load runs from one key (demo: jobs.sync max_concurrent_per_user=0)",
        ]
        if credentials:
            lines.append(f"Credentials  kept in {credentials} across runs (delete it for new ones)")
        self.stdout.write("\n".join(lines))


def _password(user: User, kept: str | None) -> str:
    """The kept password while it still signs the user in; else a new one, set now."""
    if kept and user.check_password(kept):
        return kept
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    user.save(update_fields=["password"])
    return password
