"""Run test code inside a fresh Linux network namespace, so that nothing it connects to can leave loopback.

    result = run_in_netns(probe, url, addresses=["10.0.0.5", "fec0::1"], hosts={"internal.test": "10.0.0.5"})

`run_in_netns` forks; the child unshares its network and mount namespaces (root needed: `unshare -n -m`),
so its only interface is a fresh `lo` with no route anywhere else. In the child:

- `addresses` are added to `lo`: connecting to one reaches a local listener instead of failing, so a guard
  that lets it through shows up as a hit on a trap (see `Trap`) rather than as an error or real traffic;
- `hosts` (name -> address) is written to a file bind-mounted over /etc/hosts, so the system resolver answers
  those names; `rewrite_hosts()` re-points names while the child runs (a rebinding between two lookups);
- `forward` ports (by default the test session's Redis and PostgreSQL) listen on the namespace's 127.0.0.1 and
  are relayed to the same ports on the host's 127.0.0.1 by a thread that alone joined the host namespace, so
  Django, RQ and Redis work unchanged inside the namespace and nothing else is reachable.

The function's return value (or its exception, as a traceback) comes back to the parent through a pipe, pickled.
Processes the function starts (a gunicorn, an rqworker, a fuzzer) inherit the namespace and the relays, so a
whole service can be run and probed inside one call: start it, exercise it, stop it, return the findings.
Call it from `transaction=True` tests: the parent's database connections are closed before the fork so that
the child opens its own. `netns_unavailable()` says why a test must skip (no root, no unshare).

Hand-written on libc's unshare/setns/mount (ctypes; os.unshare is 3.12+): pyroute2 makes named namespaces but
neither runs a function inside one nor relays ports, and `unshare -n -m python ...` would lose the test's state.
"""

import contextlib
import ctypes
import os
import pickle
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import connections

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

HOSTS_FILE = "/etc/hosts"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def netns_unavailable() -> str | None:
    """Why a network namespace cannot be made here (for pytest.skip), or None when it can."""
    try:
        subprocess.run(["unshare", "-n", "-m", "true"], check=True, capture_output=True, timeout=10)
    except FileNotFoundError:
        return "the unshare command is missing (util-linux)"
    except subprocess.CalledProcessError as exc:
        return f"unshare -n -m fails here (root or CAP_SYS_ADMIN needed): {exc.stderr.decode().strip()}"
    return None


def backing_service_ports() -> list[int]:
    """Ports of the Redis and database this test session uses on 127.0.0.1, to relay into the namespace."""
    ports = [urlparse(settings.REDIS_URL).port or 6379]
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        ports.append(int(database.get("PORT") or 5432))
    return ports


def _hosts_text(hosts: dict[str, str]) -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{address} {name}" for name, address in hosts.items()]
    return "\n".join(lines) + "\n"


def rewrite_hosts(hosts: dict[str, str]) -> None:
    """Inside run_in_netns: replace the namespace's hosts file (same inode, so the bind mount sees it)."""
    with open(HOSTS_FILE, "w") as file:
        file.write(_hosts_text(hosts))


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _relay(listener: socket.socket, host_netns: int, port: int) -> None:
    """Accept in the namespace, dial the host's 127.0.0.1:port: only this thread joins the host namespace."""
    _check(_libc.setns(host_netns, CLONE_NEWNET), "setns")
    while True:
        inside, _ = listener.accept()
        outside = socket.create_connection(("127.0.0.1", port))
        for source, target in ((inside, outside), (outside, inside)):
            threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _enter(addresses: Iterable[str], hosts: dict[str, str], forward: Iterable[int]) -> None:
    host_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    hosts_file = tempfile.NamedTemporaryFile("w", prefix="netns-hosts-", delete=False)  # noqa: SIM115
    hosts_file.write(_hosts_text(hosts))
    hosts_file.close()
    _check(_libc.mount(hosts_file.name.encode(), HOSTS_FILE.encode(), None, MS_BIND, None), "bind-mount hosts")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in addresses:
        prefix = "/128" if ":" in address else "/32"
        subprocess.run(["ip", "addr", "replace", address + prefix, "dev", "lo"], check=True, capture_output=True)
    for port in forward:
        listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=_relay, args=(listener, host_netns, port), daemon=True).start()


def _read_until_closed(read_end: int, pid: int, *, deadline: float) -> bytes:
    """All the child writes until it closes the pipe; the child is reaped, or killed at the deadline."""
    chunks = []
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = pipe.read(65536)
            if not chunk:
                os.waitpid(pid, 0)
                return b"".join(chunks)
            chunks.append(chunk)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the namespace child did not finish in time (killed)")


def run_in_netns(
    function: Callable[..., Any],
    *args: Any,
    addresses: Iterable[str] = (),
    hosts: dict[str, str] | None = None,
    forward: Iterable[int] | None = None,
    timeout: float = 300.0,
    **kwargs: Any,
) -> Any:
    """function(*args, **kwargs) in a forked child inside a new network and mount namespace; its result.

    A child still running after `timeout` seconds is killed and the call fails, so a hung probe cannot hang CI.
    """
    forward = backing_service_ports() if forward is None else list(forward)
    connections.close_all()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            _enter(addresses, hosts or {}, forward)
            outcome: tuple[bool, Any] = (True, function(*args, **kwargs))
        except BaseException:  # everything, SystemExit included, goes back to the parent
            outcome = (False, traceback.format_exc())
        with os.fdopen(write_end, "wb") as pipe:
            try:
                pipe.write(pickle.dumps(outcome))
            except Exception:  # an unpicklable result
                pipe.write(pickle.dumps((False, traceback.format_exc())))
        os._exit(0)
    os.close(write_end)
    data = _read_until_closed(read_end, pid, deadline=time.monotonic() + timeout)
    if not data:
        raise AssertionError("the namespace child died without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f"in the network namespace:\n{value}")
    return value


class Trap:
    """Listeners on the wildcard address (IPv4 and IPv6) of the given ports, inside a namespace: every
    connection to any address on `lo` at those ports queues up here, unanswered, until `count()` drains them.

    Counting the accept queue, not a serving thread, makes the count exact the moment it is read.
    """

    def __init__(self, ports: Iterable[int]):
        self.listeners = []
        for port in ports:
            listener = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)
            listener.setblocking(False)
            self.listeners.append(listener)
        self.hits: list[tuple[str, int]] = []

    def count(self) -> int:
        """Connections made to the trap so far (each one's local address is kept in `hits`)."""
        for listener in self.listeners:
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                self.hits.append(conn.getsockname()[:2])
                conn.close()
        return len(self.hits)
