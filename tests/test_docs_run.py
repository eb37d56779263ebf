"""The docs run: docs/quickstart.md's blocks against a live gunicorn and RQ worker, docs/webhooks.md's worked example.

The quickstart's `sh` and `python` blocks run as a reader runs them, in a checkout of their own (a temporary
directory holding `jobsite-client/` and the `var/demo-credentials.json` that `seed_demo` writes for the launcher):
`sh` with bash, `python` saved under its title and run with the repository's .venv python. Only the block that
starts the service is left out: the session's gunicorn and a worker started here stand in for it.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from standardwebhooks import Webhook

from jobs.webhooks import webhook_sign
from tests.conftest import ROOT
from tests.processes import free_port
from tests.waiting import wait_until

sys.path.insert(0, str(ROOT / "jobsite-client"))  # until requirements-dev installs ./jobsite-client

import jobsite_client as jc

QUICKSTART = ROOT / "docs" / "quickstart.md"
WEBHOOKS = ROOT / "docs" / "webhooks.md"
FENCED_BLOCK = re.compile(r'^```(\w*)(?: title="([^"]+)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)
"""A fenced block: its language, its title (the name a reader saves it under), its code."""
RUNNABLE = ("sh", "python", "js")
"""Languages of the blocks a reader runs; the others (text, output) are shown, not run."""
NOT_RUN = {"start-service"}
"""Quickstart blocks this test does not run: the session's gunicorn and a worker started here replace them."""
RUN_HERE = {
    "env",
    "sync.sh",
    "sync_job.py",
    "cancel.sh",
    "cancel_job.py",
    "receiver.py",
    "async.sh",
    "async_job.py",
    "poll.sh",
}
"""Quickstart blocks this test runs: the cancels before any worker runs, so that the jobs they cancel are still queued."""
DOC_URL = "http://127.0.0.1:8000"
"""The service URL the quickstart's `env` block sets; the test points it at the session's gunicorn instead."""
DOC_RECEIVER_PORT = "8001"
"""The receiver port the quickstart's `env` block sets; the test gives a free one instead."""
BLOCK_TIMEOUT = 60
"""Seconds a block may take: a sync job, or an async one waited for."""


@dataclass(frozen=True)
class Block:
    language: str
    title: str
    code: str


def runnable_blocks(page: Path) -> dict[str, Block]:
    """The page's runnable blocks by title; each must have one, or a reader could not tell what to save it as."""
    blocks: dict[str, Block] = {}
    for language, title, code in FENCED_BLOCK.findall(page.read_text()):
        if language not in RUNNABLE:
            continue
        assert title, f"{page.name}: a {language} block without a title:\n{code}"
        assert title not in blocks, f"{page.name}: two blocks titled {title}"
        blocks[title] = Block(language, title, code)
    return blocks


def text_blocks(page: Path) -> list[str]:
    return [code for language, _, code in FENCED_BLOCK.findall(page.read_text()) if language == "text"]


def run_sh(code: str, *, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )
    assert done.returncode == 0, f"{code}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_python(block: Block, *, cwd: Path, env: dict[str, str]) -> str:
    (cwd / block.title).write_text(block.code)
    done = subprocess.run(
        [sys.executable, block.title], cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
    )
    assert done.returncode == 0, f"{block.title}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


class BackgroundProcess:
    """A block that keeps running (the receiver), its stdout collected line by line as it comes."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def matching(self, pattern: str) -> list[re.Match]:
        return [match for line in list(self.lines) if (match := re.fullmatch(pattern, line))]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.reader.join(timeout=10)


@pytest.fixture
def background() -> Iterator[Callable[..., BackgroundProcess]]:
    started: list[BackgroundProcess] = []

    def start(argv: list[str], *, cwd: Path, env: dict[str, str]) -> BackgroundProcess:
        started.append(BackgroundProcess(argv, cwd=cwd, env=env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A reader's checkout, as far as the blocks see it: jobsite-client/ and var/."""
    (tmp_path / "jobsite-client").symlink_to(ROOT / "jobsite-client")
    (tmp_path / "var").mkdir()
    return tmp_path


def sourced_environment(code: str, *, cwd: Path) -> dict[str, str]:
    """The environment after bash ran the block: what a reader's shell holds for the next blocks."""
    output = run_sh(f"{code}\nenv -0", cwd=cwd, env=dict(os.environ))
    return dict(entry.split("=", 1) for entry in output.split("\0") if "=" in entry)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_quickstart_runs_against_a_live_service(
    server_url: str,
    start_worker: Callable[..., Any],
    checkout: Path,
    background: Callable[..., BackgroundProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = runnable_blocks(QUICKSTART)
    assert set(blocks) == RUN_HERE | NOT_RUN, "a block the test does not run, or one it misses"

    # What `python3 -m jobsite run` does before starting the processes: seed the demo data, print, keep it.
    printed = StringIO()
    credentials = checkout / "var" / "demo-credentials.json"
    call_command("seed_demo", url=server_url, credentials=credentials, stdout=printed)
    kept = json.loads(credentials.read_text())
    printed_key = re.search(r"^Demo API key (\S+)", printed.getvalue(), re.MULTILINE).group(1)
    printed_secret = re.search(r"^Demo webhook signing secret (\S+)", printed.getvalue(), re.MULTILINE).group(1)
    assert (printed_key, printed_secret) == (kept["demo_key"], kept["webhook_secret"])
    (shown,) = text_blocks(QUICKSTART)[:1]
    assert "Demo API key jsk_..." in shown and "Demo webhook signing secret whsec_..." in shown
    assert printed_key.startswith("jsk_") and printed_secret.startswith("whsec_")

    env = sourced_environment(blocks["env"].code, cwd=checkout)
    assert (env["JOBSITE_API_KEY"], env["JOBSITE_WEBHOOK_SECRET"]) == (kept["demo_key"], kept["webhook_secret"])
    assert (env["JOBSITE_URL"], env["RECEIVER_PORT"]) == (DOC_URL, DOC_RECEIVER_PORT)
    assert env["PYTHONPATH"] == str(checkout / "jobsite-client")
    env.update(JOBSITE_URL=server_url, RECEIVER_PORT=str(free_port()))

    def run(title: str) -> str:
        block = blocks[title]
        if block.language == "python":
            return run_python(block, cwd=checkout, env=env)
        return run_sh(block.code, cwd=checkout, env=env)

    synced = json.loads(run("sync.sh"))
    assert (synced["status"], synced["mode"], synced["kind"]) == ("succeeded", "sync", "hash")
    assert synced["result"]["input_hash"] == hashlib.sha256(b"hello").hexdigest()
    assert synced["result"]["iterations"] == 1000
    ran = re.fullmatch(r"succeeded ([0-9a-f]{64}) cost 0 balance (\d+)\n", run("sync_job.py"))
    assert ran and ran.group(1) == synced["result"]["output_hash"]  # cost 0: the page says a cache hit is free

    # No worker yet: the jobs the cancel blocks submit are still queued when they cancel them.
    canceled = json.loads(run("cancel.sh"))
    assert (canceled["status"], canceled["mode"]) == ("canceled", "async")
    canceled_in_python = re.fullmatch(r"canceled (\S+) canceled balance (\d+)\n", run("cancel_job.py"))
    assert canceled_in_python and int(canceled_in_python.group(2)) == int(ran.group(2))  # both refunded their cost

    start_worker("jobs", "callbacks")
    receiver_file = checkout / "receiver.py"
    receiver_file.write_text(blocks["receiver.py"].code)
    receiver = background([sys.executable, receiver_file.name], cwd=checkout, env=env)
    wait_until(lambda: receiver.matching(rf"listening on http://127\.0\.0\.1:{env['RECEIVER_PORT']}/hook"))

    queued = json.loads(run("async.sh"))
    assert (queued["status"], queued["mode"]) == ("queued", "async")
    assert queued["callback"]["url"] == f"http://127.0.0.1:{env['RECEIVER_PORT']}/hook"
    assert json.loads((checkout / "async-job.json").read_text())["id"] == queued["id"]
    lines = run("async_job.py").splitlines()
    submitted = re.fullmatch(r"submitted (\S+) queued", lines[0])
    finished = re.fullmatch(r"finished (\S+) succeeded ([0-9a-f]{64})", lines[1])
    assert submitted and finished and submitted.group(1) == finished.group(1) and len(lines) == 2

    verified = r"verified webhook (\S+): job (\S+) succeeded \{'input_hash': .*'output_hash': '([0-9a-f]{64})'.*\}"
    wait_until(lambda: len(receiver.matching(verified)) == 2, timeout=30)
    assert {m.group(2) for m in receiver.matching(verified)} == {queued["id"], submitted.group(1)}
    assert not [line for line in receiver.lines if line.startswith("refused")]

    polled = json.loads(run("poll.sh"))
    assert (polled["id"], polled["status"]) == (queued["id"], "succeeded")
    assert polled["callback"]["url"] == queued["callback"]["url"]
    assert polled["callback"]["status"] in ("pending", "delivered")
    wait_until(lambda: json.loads(run("poll.sh"))["callback"]["status"] == "delivered")  # as the page says: then
    (attempt,) = json.loads(run("poll.sh"))["callback"]["attempts"]
    assert (attempt["n"], attempt["status_code"], attempt["error"]) == (1, 204, "")
    monkeypatch.setenv("JOBSITE_WEBHOOK_SECRET", kept["webhook_secret"])  # what the handlers read on import
    delivery_handlers_verify(polled, secret=kept["webhook_secret"], cwd=checkout)


def delivery_handlers_verify(job: dict[str, Any], *, secret: str, cwd: Path) -> None:
    """docs/webhooks.md's Python handlers accept a delivery of the job signed as the service signs, refuse a forgery."""
    body = json.dumps(job, separators=(",", ":"))
    headers = _headers([secret], datetime.now(UTC), body)
    forged = body.replace('"succeeded"', '"failed"', 1)
    for title in ("verify_with_client.py", "verify_with_standardwebhooks.py"):
        (cwd / title).write_text(runnable_blocks(WEBHOOKS)[title].code)
        handle = runpy.run_path(str(cwd / title))["handle"]
        with contextlib.redirect_stdout(StringIO()) as printed:
            assert handle(body.encode(), headers) == 204, title
            assert handle(forged.encode(), headers) == 400, title
        verified, refused = printed.getvalue().splitlines()
        assert verified.startswith(f"verified {headers['webhook-id']} ") and f" {job['id']} succeeded" in verified
        assert refused.startswith("refused:"), title


WORKED_ASSIGNMENT = re.compile(r"^(SECRET|ID|TS|BODY)='([^']*)'$", re.MULTILINE)
DOCUMENTED_SIGNATURE = re.compile(r"`webhook-signature: (v1,[A-Za-z0-9+/=]+)`")


@dataclass(frozen=True)
class WorkedExample:
    secret: str
    msg_id: str
    timestamp: str
    body: str
    signature: str

    @property
    def signed_content(self) -> str:
        return f"{self.msg_id}.{self.timestamp}.{self.body}"


@pytest.fixture
def worked() -> WorkedExample:
    values = dict(WORKED_ASSIGNMENT.findall(runnable_blocks(WEBHOOKS)["worked-example.sh"].code))
    (signature,) = set(DOCUMENTED_SIGNATURE.findall(WEBHOOKS.read_text()))
    return WorkedExample(values["SECRET"], values["ID"], values["TS"], values["BODY"], signature)


def test_the_worked_example_is_what_the_service_signs(worked: WorkedExample) -> None:
    key = base64.b64decode(worked.secret.removeprefix("whsec_"))
    assert len(key) == 32
    by_hand = hmac.new(key, worked.signed_content.encode(), hashlib.sha256).digest()
    assert worked.signature == "v1," + base64.b64encode(by_hand).decode()
    at = datetime.fromtimestamp(int(worked.timestamp), UTC)
    assert Webhook(worked.secret).sign(worked.msg_id, at, worked.body) == worked.signature
    signed_by_service = webhook_sign(secrets_=[worked.secret], msg_id=worked.msg_id, timestamp=at, body=worked.body)
    assert signed_by_service == worked.signature
    delivery, signed_content = text_blocks(WEBHOOKS)[:2]
    assert worked.signed_content == signed_content.strip()
    sample = delivery.splitlines()
    assert sample[-1] == worked.body
    signature = f"webhook-signature: {worked.signature}"
    for header in (f"webhook-id: {worked.msg_id}", f"webhook-timestamp: {worked.timestamp}", signature):
        assert header in sample


def test_the_worked_example_commands_print_the_signature(worked: WorkedExample, tmp_path: Path) -> None:
    blocks = runnable_blocks(WEBHOOKS)
    assert set(blocks) == {"worked-example.sh", "sign.js", "verify_with_client.py", "verify_with_standardwebhooks.py"}
    assert run_sh(blocks["worked-example.sh"].code, cwd=tmp_path, env=dict(os.environ)) == worked.signature + "\n"
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: sign.js not run")
    (tmp_path / "sign.js").write_text(blocks["sign.js"].code)
    env = dict(os.environ, SECRET=worked.secret, ID=worked.msg_id, TS=worked.timestamp, BODY=worked.body)
    done = subprocess.run([node, "sign.js"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout == worked.signature + "\n", done.stderr


def _headers(secrets_: list[str], at: datetime, body: str) -> dict[str, str]:
    msg_id = "3f8c2a1e-9b47-4d2e-8a61-0c5d7e9f1b23"
    signature = webhook_sign(secrets_=secrets_, msg_id=msg_id, timestamp=at, body=body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


@pytest.mark.parametrize("offset, accepted", [(-290, True), (290, True), (-310, False), (310, False)])
def test_the_documented_timestamp_tolerance(worked: WorkedExample, offset: int, accepted: bool) -> None:
    at = datetime.now(UTC) + timedelta(seconds=offset)
    headers = _headers([worked.secret], at, worked.body)
    if accepted:
        assert jc.verify_webhook(worked.body.encode(), headers, worked.secret).id == headers["webhook-id"]
    else:
        with pytest.raises(jc.InvalidWebhook):
            jc.verify_webhook(worked.body.encode(), headers, worked.secret)
    assert "more than **5 minutes** from your clock" in WEBHOOKS.read_text()


def test_during_a_rotation_either_secret_verifies(worked: WorkedExample) -> None:
    new = "whsec_" + base64.b64encode(bytes(range(32, 64))).decode()
    headers = _headers([new, worked.secret], datetime.now(UTC), worked.body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, worked.secret):
        assert Webhook(secret).verify(worked.body.encode(), headers) == json.loads(worked.body)
    with pytest.raises(jc.InvalidWebhook):
        jc.verify_webhook(worked.body.encode(), headers, "whsec_" + base64.b64encode(bytes(32)).decode())
