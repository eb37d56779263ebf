"""The wall-clock deadline of one job run, and the means to hold blocking I/O to it.

Every run gets a Deadline from its kind's `time_limit` (a sync job: one for the whole request, retries
included). CPU kinds call `check()` between steps. Blocking HTTP cannot be cancelled from outside in
sync Python, and httpx's timeouts apply per read, so a peer that sends one byte every few seconds never
trips them; `http_watch()` therefore hooks the request (httpcore's `trace` extension, installed through
httpx's per-request auth hook, the one hook a caller of a prepared client has) to learn each socket it
opens, and a timer shuts that socket down at the deadline: the blocked read wakes at once, in any phase
(TLS handshake, headers, body). Written here because httpx has no total timeout (encode/httpx#1450, open;
its timeouts are per operation), and async cancellation (anyio.fail_after) would need a second, async
client beside the pooled one the SSRF guard owns.
"""

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

TCP_CONNECTED_EVENT = "connection.connect_tcp.complete"
"""httpcore's trace event that carries a new connection's network stream as `return_value`."""


class DeadlineExceeded(Exception):
    """The run went past its deadline; the job fails with `time_limit`."""


class StopRequested(Exception):
    """The run was asked to stop before its deadline (its job is being canceled); the job ends canceled."""


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock that a run must finish by, or sooner if it is asked to stop."""

    seconds: float
    expires_at: float
    stop_requested: Callable[[], bool] | None = None
    """Polled by check(), so kinds need no second check: true once the run must stop early (jobs.stop)."""

    @classmethod
    def after(cls, seconds: float, *, stop_requested: Callable[[], bool] | None = None) -> "Deadline":
        return cls(seconds=seconds, expires_at=time.monotonic() + seconds, stop_requested=stop_requested)

    @classmethod
    def never(cls) -> "Deadline":
        """No deadline: for a kind called outside a job run (tests, shells)."""
        return cls(seconds=math.inf, expires_at=math.inf)

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        """Raise DeadlineExceeded once the deadline has passed, StopRequested once a stop was asked for."""
        if self.expired:
            raise DeadlineExceeded(f"ran over {self.seconds:g} s")
        if self.stop_requested is not None and self.stop_requested():
            raise StopRequested("stop requested")

    def cap(self, seconds: float) -> float:
        """A timeout of at most `seconds` that ends no later than the deadline (never zero: httpx reads 0 as none)."""
        return max(0.001, min(seconds, self.remaining()))

    @contextlib.contextmanager
    def http_watch(self) -> Iterator[httpx.Auth]:
        """An httpx `auth` for requests made inside the block: their sockets are shut down at the deadline.

        Only sockets opened under a watch are known: a request must not reuse a kept-alive connection opened
        before (`fetch` sends `Connection: close`; web processes make no other outbound requests, and in a
        worker RQ's job timeout, just after the deadline, stays as the backstop).
        """
        watch = _SocketWatch()
        timer = None
        if math.isfinite(self.expires_at):
            timer = threading.Timer(max(0.0, self.remaining()), watch.shut_down)
            timer.daemon = True
            timer.start()
        try:
            yield watch
        finally:
            if timer is not None:
                timer.cancel()
            watch.release()


class _SocketWatch(httpx.Auth):
    """Holds a duplicate of each socket its requests open, to shut them down when the deadline passes.

    A duplicate (dup(2)) keeps the socket itself alive until the watch ends, so the descriptor shut down
    at the deadline can never be one the kernel has meanwhile given to another connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.extensions = {**request.extensions, "trace": self._trace}
        yield request

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event != TCP_CONNECTED_EVENT:
            return
        raw = info["return_value"].get_extra_info("socket")
        with self._lock:
            self._sockets.append(raw.dup())
            late = self._fired
        if late:  # connected after the deadline (the connect timeout is capped, but not to the microsecond)
            self.shut_down()

    def shut_down(self) -> None:
        """Wake every blocked read or write on the watched sockets: they see the connection end."""
        with self._lock:
            self._fired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
