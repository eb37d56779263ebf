"""A small process supervisor, standard library only (the launcher runs before .venv exists).

Each child runs in a process group of its own, so that stopping it also stops what it forked (RQ's
scheduler), and so that a terminal's Ctrl-C reaches only the supervisor, which then stops every group in
order. A child that exits is logged and restarted with capped exponential backoff; the others keep running.
Hand-written because supervisord/circus would need a daemon and a config file of their own for the one-command
local run; production uses the Procfile with its platform's supervisor.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

RESTART_FIRST_DELAY = 0.5
"""Seconds before the first restart of a child that died; doubled per consecutive crash."""

RESTART_MAX_DELAY = 10.0
"""Cap of the restart backoff."""

STABLE_AFTER = 30.0
"""A child that ran this many seconds before dying is restarted after the first delay again."""

STOP_TIMEOUT = 10.0
"""Seconds a child's group gets between SIGTERM and SIGKILL."""


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class Child:
    """One supervised command and its current process."""

    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] | None = None
    stdout: IO[Any] | int | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    restarts: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)
    """(time, exit code) of every exit seen by the supervisor."""

    def start(self) -> subprocess.Popen[bytes]:
        self.process = process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=self.stdout,
            stderr=subprocess.STDOUT if self.stdout else None,
            start_new_session=True,  # its own process group: its children are stopped with it
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        return process


class Supervisor:
    """Start children, restart the ones that die, stop them all (and their process groups) on request."""

    def __init__(self, *, log: Callable[[str], None] | None = None):
        self.children: dict[str, Child] = {}
        self._log = log or (lambda line: print(f"supervisor: {line}", file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._stopping = False

    def add(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        stdout: IO[Any] | int | None = None,
    ) -> Child:
        child = Child(name=name, argv=[str(part) for part in argv], cwd=cwd, env=env, stdout=stdout)
        self.children[name] = child
        return child

    def start(self) -> None:
        with self._lock:
            for child in self.children.values():
                process = child.start()
                self._log(f"started {child.name} (pid {process.pid})")

    def poll(self) -> None:
        """Notice children that exited (ending what they left in their group) and restart those that are due."""
        with self._lock:
            if self._stopping:
                return
            now = time.monotonic()
            for child in self.children.values():
                if child.restart_at is None and child.process is not None:
                    code = child.process.poll()
                    if code is None:
                        continue
                    _signal_group(child.process.pid, signal.SIGKILL)  # orphans, e.g. RQ's scheduler
                    child.history.append((time.time(), code))
                    child.crashes = 1 if now - child.started_at >= STABLE_AFTER else child.crashes + 1
                    delay = min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2 ** (child.crashes - 1))
                    child.restart_at = now + delay
                    self._log(f"{child.name} (pid {child.process.pid}) exited with {code}; restarting in {delay:.1f} s")
                if child.restart_at is not None and now >= child.restart_at:
                    process = child.start()
                    child.restarts += 1
                    self._log(f"restarted {child.name} (pid {process.pid}, restart {child.restarts})")

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Poll until `stop` is set (the run command and tests call this; the caller then calls stop_all)."""
        while not stop.wait(interval):
            self.poll()

    def stop_all(self) -> None:
        """SIGTERM every child's process group, wait, then SIGKILL what is left: no orphans."""
        with self._lock:
            self._stopping = True
            running = [child.process for child in reversed(self.children.values()) if child.process is not None]
            for process in running:
                _signal_group(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                _signal_group(process.pid, signal.SIGKILL)  # the leader's leftovers, or a leader that hung
                process.wait()
