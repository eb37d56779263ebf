"""The deployment files: gunicorn.conf.py serves for real, compose.yaml and the Procfile agree, the alert rules
pass their promtool unit tests, the dashboard's queries parse."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import ROOT, subprocess_env
from tests.processes import free_port, required_tool
from tests.waiting import wait_answering

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROCESS_TYPES = ("web", "job-worker", "webhook-worker", "cron")


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = (line.split(":", 1) for line in lines if line and not line.startswith("#"))
    return {name: shlex.split(command) for name, command in entries}


def test_compose_runs_the_procfile_processes_with_postgres_redis_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "prometheus", *PROCESS_TYPES} <= set(services)
    processes = procfile()
    assert set(PROCESS_TYPES) <= set(processes)
    for name in PROCESS_TYPES:
        assert services[name]["command"] == processes[name], name
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://redis:")
        assert env["PROMETHEUS_MULTIPROC_DIR"] == "/metrics"
        assert "metrics:/metrics" in services[name]["volumes"]
        if name != "web":  # prometheus_client names files by PID: one PID namespace for all writers of the volume
            assert services[name]["pid"] == "service:web"
    assert services["migrate"]["command"] == processes["release"]
    assert services["cron"].get("deploy", {}).get("replicas", 1) == 1
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["alerts.yml"]
    [scrape] = prometheus["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["web:8000"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def test_alert_rules_pass_their_unit_tests() -> None:
    promtool = required_tool("promtool", package="prometheus")
    for argv in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *argv], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    tested = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    assert all(f"alertname: {rule['alert']}" in tested for rule in rules)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool = required_tool("promtool", package="prometheus")
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "jobsite-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", "dashboard.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _print_config(**env: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--print-config"],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = (line.split(" = ", 1) for line in done.stdout.splitlines() if " = " in line)
    return {name.strip(): value.strip() for name, value in pairs}


def test_gunicorn_config_is_sized_by_the_machine_and_the_environment() -> None:
    default = _print_config()
    assert default["workers"] == str(max(2, os.cpu_count() or 1))
    assert default["worker_class"] == "gthread" and default["threads"] == "8" and default["timeout"] == "60"
    assert default["bind"] == "['0.0.0.0:8000']"
    tuned = _print_config(WEB_CONCURRENCY="5", GUNICORN_THREADS="4", GUNICORN_TIMEOUT="30", PORT="9001")
    assert (tuned["workers"], tuned["threads"], tuned["timeout"]) == ("5", "4", "30")
    assert tuned["bind"] == "['0.0.0.0:9001']"
    assert _print_config(BIND="127.0.0.1:7000,[::1]:7000")["bind"] == "['127.0.0.1:7000', '[::1]:7000']"


@pytest.mark.slow
@pytest.mark.django_db
def test_gunicorn_config_serves_and_owns_the_metrics_directory(tmp_path: Path) -> None:
    """The config creates PROMETHEUS_MULTIPROC_DIR, drops an earlier run's files and keeps live processes' files."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    dead = metrics_dir / "counter_4194305.db"  # above Linux's largest PID: no such process
    live = metrics_dir / f"counter_{os.getpid()}.db"
    for path in (dead, live):
        MmapedDict(str(path)).close()  # a valid, empty metrics file
    port = free_port()
    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answering(url)
        assert not dead.exists() and live.exists()
        assert "jobsite_queue_depth" in httpx.get(f"{url}/metrics", timeout=5).text
        assert any(path.name.startswith(("counter_", "histogram_")) for path in metrics_dir.iterdir() if path != live)
    finally:
        process.terminate()
        process.wait(timeout=15)
