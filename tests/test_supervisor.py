"""The run command's supervisor: a child that dies is restarted (and what it forked is ended), stop ends all."""

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsite.supervisor import Supervisor
from tests.processes import group_alive
from tests.waiting import wait_until

FORKING_CHILD = """
import os, sys, time
if os.fork() == 0:  # a grandchild, as RQ's scheduler is to a worker
    time.sleep(600)
    sys.exit(0)
time.sleep(600)
"""


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[Supervisor, list[str]]]:
    lines: list[str] = []
    supervisor = Supervisor(log=lines.append)
    for name in ("forker", "bystander"):
        supervisor.add(name, [sys.executable, "-c", FORKING_CHILD], cwd=tmp_path)
    supervisor.start()
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop, 0.05), daemon=True)
    thread.start()
    yield supervisor, lines
    stop.set()
    thread.join()
    supervisor.stop_all()


def test_a_dead_child_is_restarted_alone_and_its_orphans_ended(supervisor: tuple[Supervisor, list[str]]) -> None:
    sup, lines = supervisor
    forker, bystander = sup.children["forker"], sup.children["bystander"]
    first_pid, bystander_pid = forker.process.pid, bystander.process.pid
    os.kill(first_pid, signal.SIGKILL)  # the leader only: its grandchild lives on in its group
    wait_until(lambda: forker.restarts == 1, timeout=10)
    assert forker.process.pid != first_pid and forker.process.poll() is None
    wait_until(lambda: not group_alive(first_pid), timeout=5)  # the grandchild went with it
    assert bystander.process.pid == bystander_pid and bystander.process.poll() is None
    assert any(f"forker (pid {first_pid}) exited with -9" in line for line in lines), lines


def test_restarts_back_off_while_a_child_keeps_dying(tmp_path: Path) -> None:
    lines: list[str] = []
    sup = Supervisor(log=lines.append)
    sup.add("crasher", [sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path)
    sup.start()
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_until(lambda: sup.children["crasher"].restarts >= 3, timeout=20)
    finally:
        stop.set()
        thread.join()
        sup.stop_all()
    delays = [line.split("restarting in ")[1] for line in lines if "restarting in" in line]
    assert delays[:3] == ["0.5 s", "1.0 s", "2.0 s"], lines


def test_stop_all_ends_every_child_and_grandchild(supervisor: tuple[Supervisor, list[str]]) -> None:
    sup, _ = supervisor
    groups = [child.process.pid for child in sup.children.values()]
    wait_until(lambda: all(group_alive(group) for group in groups), timeout=5)
    sup.stop_all()
    assert not [group for group in groups if group_alive(group)]
