"""The Python client (jobsite-client) for the tests that drive the live service through it (the `client_of` fixture
is in conftest): its import, a webhook receiver that verifies each delivery as an integrator's would, and what a
refused request must leave unchanged."""

import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from accounts.models import User
from credits.selectors import credit_balance, ledger_list
from jobs.models import Batch, Job
from tests.conftest import ROOT, LocalHTTPServer, respond

sys.path.insert(0, str(ROOT / "jobsite-client"))  # until requirements-dev installs ./jobsite-client

import jobsite_client as jc


class VerifyingReceiver:
    """A webhook receiver on 127.0.0.1 that answers 204 to a delivery signed with `secret` and 400 to any other,
    keeping the verified events and the refusals in arrival order."""

    def __init__(self, http_server: Callable[..., LocalHTTPServer], secret: str):
        self.secret = secret
        self.events: list[jc.WebhookEvent] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self.server = http_server(self._receive)
        self.url = self.server.url
        self.requests = self.server.requests

    def _receive(self, request: BaseHTTPRequestHandler) -> None:
        # The server records each request before calling its handler: find this one's among concurrent deliveries.
        headers = dict(request.headers)
        delivery = next(seen for seen in reversed(self.requests) if seen["headers"] == headers)
        try:
            event = jc.verify_webhook(delivery["body"], delivery["headers"], self.secret)
        except jc.InvalidWebhook as exc:
            with self._lock:
                self.refused.append(str(exc))
            respond(request, 400)
            return
        with self._lock:
            self.events.append(event)
        respond(request, 204)


def account_snapshot(user: User) -> tuple[int, int, int, int]:
    """What a refused request must not change: the balance, the ledger, the batches and the jobs of the user."""
    return (
        credit_balance(user=user),
        ledger_list(user=user).count(),
        Batch.objects.filter(owner=user).count(),
        Job.objects.filter(owner=user).count(),
    )
