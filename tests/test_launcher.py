"""The launcher (`python3 -m jobsite`) and the run command's demo data: safe to run twice, clear when it cannot run."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import User
from accounts.selectors import api_key_get_active
from accounts.services import api_key_revoke
from jobs.webhooks import webhook_signing_secrets
from jobsite import __main__ as launcher
from jobsite.__main__ import service_commands, venv_made_by_another_python
from tests.conftest import ROOT
from tests.processes import free_port, group_alive
from tests.waiting import wait_answering, wait_until


def _old_pythons() -> list[str]:
    """Interpreters older than 3.11 that really run here (pyenv shims of absent versions do not)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (8, 9, 10)]
    candidates += [str(path) for path in Path("/root/.pyenv/versions").glob("[23].[0-9]*/bin/python")]
    found = {}
    for path in filter(None, candidates):
        done = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info < (3, 11))"], capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.strip() == "True":
            found[path] = None
    return list(found)


OLD_PYTHONS = _old_pythons()


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python older than 3.11 on this machine")
@pytest.mark.parametrize("python", OLD_PYTHONS)
def test_an_old_python_is_refused_in_one_line(python: str) -> None:
    for command in ("run", "test"):
        done = subprocess.run([python, "-m", "jobsite", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("Jobsite needs Python 3.11 or newer; this is Python ")


def test_a_venv_made_by_another_python_is_rebuilt(tmp_path: Path) -> None:
    running = "{}.{}.{}".format(*sys.version_info[:3])
    assert venv_made_by_another_python(tmp_path / "absent") is None
    (tmp_path / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {running}\n")
    assert venv_made_by_another_python(tmp_path) is None
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.10.12\n")
    assert "made by Python 3.10.12" in (venv_made_by_another_python(tmp_path) or "")
    (tmp_path / "pyvenv.cfg").unlink()  # a half-made venv
    assert venv_made_by_another_python(tmp_path) is not None


def test_a_second_run_on_a_taken_port_touches_nothing(tmp_path: Path) -> None:
    credentials, metrics = ROOT / "var" / "demo-credentials.json", ROOT / "var" / "prometheus"
    before = {path: path.stat().st_mtime_ns for path in (credentials, metrics) if path.exists()}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "jobsite", "run"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
        )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"port {port} is already in use (another `python3 -m jobsite run`?): stop it, or pass --port"
    )
    assert done.stdout == ""
    assert {path: path.stat().st_mtime_ns for path in before} == before


def test_run_help_prints_usage_and_starts_nothing() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "jobsite", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
    )
    assert done.returncode == 0, done.stderr
    assert "--port PORT" in done.stdout
    for variable in ("PORT", "REDIS_URL", "DATABASE_URL", "RQ_WORKERS", "RQ_CALLBACK_WORKERS"):
        assert f"  {variable} " in done.stdout
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "nothing listens: --help started no server"


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_run_in_the_background_stops_on_sigint_and_sigterm(tmp_path: Path, stop_signal: signal.Signals) -> None:
    """A shell's `cmd &` starts it with SIGINT ignored; it must still stop, with every process it started."""
    port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",  # none answers there: the launcher starts its own
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "RQ_WORKERS": "1",
        "RQ_CALLBACK_WORKERS": "1",
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "jobsite", "run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        wait_answering(f"http://127.0.0.1:{port}", timeout=180)  # a fresh database: it migrates first
        launcher.send_signal(stop_signal)
        assert launcher.wait(timeout=60) in (130, 143)
        wait_until(lambda: not group_alive(launcher.pid), timeout=30)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", redis_port)) != 0, "the Redis it started is stopped too"
    finally:
        if group_alive(launcher.pid):
            os.killpg(launcher.pid, signal.SIGKILL)


@pytest.mark.django_db
def test_seed_demo_keeps_its_credentials_across_runs(tmp_path: Path) -> None:
    stored = tmp_path / "demo-credentials.json"
    call_command("seed_demo", "--credentials", str(stored), stdout=StringIO())
    first = json.loads(stored.read_text())
    demo = User.objects.get(username="demo")
    secrets_signing = webhook_signing_secrets(user_id=demo.pk)
    assert secrets_signing == [first["webhook_secret"]], "a fresh demo signs with one secret, not two"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    out = StringIO()
    call_command("seed_demo", "--credentials", str(stored), stdout=out)
    assert json.loads(stored.read_text()) == first
    assert first["demo_key"] in out.getvalue() and first["admin_password"] in out.getvalue()
    assert first["webhook_secret"] in out.getvalue()
    assert APIClient(HTTP_AUTHORIZATION=f"Bearer {first['demo_key']}").get("/api/v1/me/").status_code == 200
    assert User.objects.get(username="admin").check_password(first["admin_password"])
    assert webhook_signing_secrets(user_id=demo.pk) == secrets_signing  # not rotated again

    api_key_revoke(prefix=api_key_get_active(raw_key=first["demo_key"]).prefix)  # staff revoked it meanwhile
    call_command("seed_demo", "--credentials", str(stored), stdout=StringIO())
    third = json.loads(stored.read_text())
    assert third["demo_key"] != first["demo_key"] and api_key_get_active(raw_key=third["demo_key"]) is not None
    assert {k: v for k, v in third.items() if k != "demo_key"} == {k: v for k, v in first.items() if k != "demo_key"}


@pytest.mark.django_db
def test_dumpdata_without_app_labels_serializes_the_whole_database(user: User) -> None:
    out = StringIO()
    call_command("dumpdata", stdout=out)
    records = json.loads(out.getvalue())
    assert {"username": "alice"}.items() <= next(r["fields"] for r in records if r["model"] == "accounts.user").items()
    assert not any(r["model"].startswith("django_rq.") for r in records)


def test_run_starts_one_worker_pool_per_queue_sized_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQ_WORKERS", "2")
    monkeypatch.setenv("RQ_POOLS", "cpu:1,io:3")
    monkeypatch.setenv("RQ_CALLBACK_WORKERS", "1")
    commands = service_commands("8000")
    queues = {
        name: argv[argv.index("rqworker") + 1 : argv.index("--worker-class")]
        for name, argv in commands.items()
        if "rqworker" in argv
    }
    assert queues == {
        "jobs-worker-1": ["jobs", "maintenance"],
        "jobs-worker-2": ["jobs", "maintenance"],
        "cpu-worker-1": ["cpu"],
        "io-worker-1": ["io"],
        "io-worker-2": ["io"],
        "io-worker-3": ["io"],
        "callbacks-worker-1": ["callbacks"],
    }
    monkeypatch.setenv("RQ_POOLS", "cpu:0")
    with pytest.raises(SystemExit, match="RQ_POOLS"):
        service_commands("8000")


@pytest.fixture
def launcher_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The launcher's var/ in a temporary directory, and none of the variables it reads set."""
    monkeypatch.setattr(launcher, "VAR", tmp_path)
    monkeypatch.setattr(launcher, "SECRET_KEY_FILE", tmp_path / "secret-key")
    for variable in ("SECRET_KEY", "DEBUG", "DATABASE_URL"):
        monkeypatch.setenv(variable, "")  # recorded, so what the launcher sets is undone after the test
        monkeypatch.delenv(variable)
    return tmp_path


def test_run_keeps_a_random_secret_key_and_leaves_debug_off(
    launcher_var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher._local_secret_key()
    first = os.environ["SECRET_KEY"]
    assert len(first) >= 50 and "DEBUG" not in os.environ
    assert stat.S_IMODE((launcher_var / "secret-key").stat().st_mode) == 0o600
    (launcher_var / "jobsite.sqlite3").touch()  # a run's database: the key it was made under is kept
    monkeypatch.delenv("SECRET_KEY")
    launcher._local_secret_key()
    assert os.environ["SECRET_KEY"] == first

    monkeypatch.setenv("SECRET_KEY", "set-by-the-operator")  # never replaced
    launcher._local_secret_key()
    assert os.environ["SECRET_KEY"] == "set-by-the-operator" and "DEBUG" not in os.environ


def test_run_on_a_var_of_an_earlier_version_keeps_its_development_key(launcher_var: Path) -> None:
    (launcher_var / "jobsite.sqlite3").touch()  # rows encrypted under DEBUG's development key, before var/secret-key
    launcher._local_secret_key()
    assert os.environ["DEBUG"] == "true" and "SECRET_KEY" not in os.environ
    assert not (launcher_var / "secret-key").exists()
