"""The webhook receiver: a small HTTP server on 127.0.0.1 that records when each job's callback arrives.

With a signing secret it verifies every delivery with jobsite-client's `verify_webhook` and answers 400
to a bad signature (so that the sender retries, as the spec expects); without one it accepts all.
"""

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jobsite_client import InvalidWebhook, verify_webhook

from loadgen.stats import CallbackCounts

CALLBACK_PATH = "/callback"
"""The path loadgen puts in every callback_url."""


@dataclass(frozen=True)
class Arrival:
    """The first accepted delivery for one job: when (time.perf_counter) and the job status it carried."""

    at: float
    status: str | None


class WebhookReceiver:
    """Records callbacks by job id; `id_field` is where the id is in the body (`id`, or `request_id` in compat)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, secret: str | None = None, id_field: str = "id"):
        self.secret = secret or None
        self.id_field = id_field
        self.arrivals: dict[str, Arrival] = {}
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="loadgen-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"http://{host}:{port}{CALLBACK_PATH}"

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self, job_ids: set[str]) -> int:
        """How many of these jobs have had their callback."""
        with self.lock:
            return len(job_ids & self.arrivals.keys())

    def snapshot(self, job_ids: set[str]) -> tuple[dict[str, Arrival], CallbackCounts]:
        """The arrivals so far and the counters, with how many callbacks belong to none of these jobs."""
        with self.lock:
            statuses = Counter(str(a.status) for job_id, a in self.arrivals.items() if job_id in job_ids)
            return dict(self.arrivals), CallbackCounts(
                verified=self.counts["verified"],
                invalid=self.counts["invalid"],
                unverified=self.counts["unverified"],
                duplicates=self.counts["duplicates"],
                malformed=self.counts["malformed"],
                unmatched=len(self.arrivals.keys() - job_ids),
                statuses=dict(sorted(statuses.items())),
            )

    def reset(self) -> None:
        """Forget everything, so that each phase counts its own callbacks."""
        with self.lock:
            self.arrivals.clear()
            self.counts.clear()

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        """Check and record one delivery; returns the HTTP status to answer with."""
        at = time.perf_counter()
        try:
            payload: Any = json.loads(body) if self.secret is None else verify_webhook(body, headers, self.secret).data
        except InvalidWebhook:
            self._count("invalid")
            return 400
        except ValueError:
            self._count("malformed")
            return 400
        job_id = payload.get(self.id_field) if isinstance(payload, dict) else None
        if not isinstance(job_id, str):
            self._count("malformed")
            return 400
        with self.lock:
            self.counts["verified" if self.secret is not None else "unverified"] += 1
            if job_id in self.arrivals:
                self.counts["duplicates"] += 1
            else:
                self.arrivals[job_id] = Arrival(at=at, status=payload.get("status"))
        return 204

    def _count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver.handle(body, dict(self.headers)) if self.path == CALLBACK_PATH else 404
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
