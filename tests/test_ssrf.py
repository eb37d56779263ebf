"""SSRF corpus: every forbidden URL is rejected at submission, by the fetch kind and at delivery, and a
listening socket on 127.0.0.1 proves that none of them led to a connection."""

import socket
from collections.abc import Iterator

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import User
from jobs import ssrf
from jobs.kinds import KINDS, KindError, RunContext
from jobs.models import CallbackStatus, Job, JobMode, JobStatus, KindSettings
from jobs.webhooks import callback_deliver
from tests.conftest import run_worker_burst
from tests.webhook_helpers import FakeDNS, drain_callbacks

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = "93.184.216.34"
"""A public address the fake DNS may answer; nothing ever connects to it in these tests."""


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1 that nobody accepts on: any connection attempt queues up here."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections_seen(sock: socket.socket) -> int:
    seen = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return seen
        conn.close()
        seen += 1


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(
        {
            "internal.test": ["10.0.0.5"],
            "loopback.test": ["127.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "v6loop.test": ["::1"],
            "mapped.test": ["::ffff:127.0.0.1"],
            "nat64.test": ["64:ff9b::7f00:1"],
            "mixed.test": [PUBLIC, "127.0.0.1"],
            "cgnat.test": ["100.64.1.2"],
            "public.test": [PUBLIC],
        }
    )
    monkeypatch.setattr(ssrf, "resolver", fake)
    return fake


def corpus(port: int) -> list[str]:
    hosts = [
        # IPv4 loopback in every notation
        "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0X7F000001", "0x7f.0.0.1", "0x7f.1",
        "0177.0.0.1", "0177.1", "017700000001", "127.000.000.001", "127.0.0.1.", "127.255.255.254",
        # other forbidden IPv4
        "0.0.0.0", "0", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
        # IPv6 and IPv4 embedded in IPv6
        "[::1]", "[::]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:10.0.0.1]",
        "[64:ff9b::127.0.0.1]", "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b:1::a00:1]",
        "[2002:7f00:1::1]", "[2002:c0a8:101::1]", "[::127.0.0.1]", "[::7f00:1]", "[fe80::1]", "[fc00::1]",
        "[fd12:3456::1]", "[ff02::1]", "[2001:db8::1]",
        # localhost names, and names the (fake) DNS resolves to forbidden addresses
        "localhost", "LOCALHOST", "localhost.", "api.localhost", "ip6-localhost",
        "internal.test", "loopback.test", "metadata.test", "v6loop.test", "mapped.test", "nat64.test",
        "mixed.test", "cgnat.test",
        # not hosts at all
        "%31%32%37.0.0.1", "127.0.0.1.1", "0x100000000", "256.0.0.1", "08.0.0.1",
    ]  # fmt: skip
    urls = [f"http://{host}:{port}/hook" for host in hosts]
    urls += [
        f"https://127.1:{port}/",
        f"ftp://{PUBLIC}/", "file:///etc/passwd", f"gopher://127.0.0.1:{port}/", "javascript:alert(1)",
        f"dict://public.test:{port}/", f"ws://public.test:{port}/",
        f"http://user:pass@public.test:{port}/", f"http://user@public.test:{port}/", f"http://:pw@public.test:{port}/",
        "not a url", "http:///nohost",
    ]  # fmt: skip
    return urls


@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_forbidden_urls_are_rejected_everywhere_without_a_connection(
    api: APIClient, user: User, trap: socket.socket, dns: FakeDNS
) -> None:
    port = trap.getsockname()[1]
    urls = corpus(port)
    assert len(urls) >= 40
    hash_job = {"kind": "hash", "input": {"data": "x", "iterations": 1}}
    context = RunContext(owner_id=0, job_id="corpus")
    for url in urls:
        # submission
        response = api.post("/api/v1/jobs/async/", {**hash_job, "callback_url": url}, format="json")
        assert response.status_code == 400, (url, response.content)
        assert response.json()["code"] == "callback_url_forbidden", url
        fetch = api.post("/api/v1/jobs/async/", {"kind": "fetch", "input": {"url": url}}, format="json")
        assert fetch.status_code == 400 and fetch.json()["code"] == "validation_error", url
        # the fetch kind itself (a URL that slipped past submission)
        with pytest.raises(KindError) as error:
            KINDS["fetch"].run({"url": url}, context)
        assert error.value.code == "url_forbidden", (url, error.value.message)
        # delivery of a job whose stored callback_url is forbidden
        job = Job.objects.create(
            owner=user, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC,
            status=JobStatus.SUCCEEDED, callback_url=url, callback_status=CallbackStatus.PENDING,
        )  # fmt: skip
        assert callback_deliver(job_id=job.pk, n=1, retries_left=3) == "failed", url
        attempt = job.callback_attempts.get()
        assert attempt.error.startswith("callback_url_forbidden"), (url, attempt.error)
    assert Job.objects.filter(callback_status=CallbackStatus.FAILED).count() == len(urls)
    assert connections_seen(trap) == 0


@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_name_rebinding_to_loopback_at_delivery_is_caught(api: APIClient, trap: socket.socket, dns: FakeDNS) -> None:
    port = trap.getsockname()[1]
    answers = iter([[PUBLIC]])
    dns.records["rebind.test"] = lambda: next(answers, ["127.0.0.1"])
    KindSettings.objects.update_or_create(kind="hash", defaults={"callback_backoff": 0.01})
    url = f"http://rebind.test:{port}/hook"
    response = api.post(
        "/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "x"}, "callback_url": url}, format="json"
    )
    assert response.status_code == 202  # public at submission
    run_worker_burst()
    drain_callbacks()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.callback_status == CallbackStatus.FAILED
    [attempt] = job.callback_attempts.all()  # forbidden is final: no retries
    assert "127.0.0.1 is a loopback address" in attempt.error
    assert connections_seen(trap) == 0


@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_unresolvable_name_is_accepted_then_retried_and_failed(api: APIClient, dns: FakeDNS) -> None:
    KindSettings.objects.update_or_create(kind="hash", defaults={"callback_backoff": 0.01, "callback_retries": 1})
    url = "https://not-yet.test/hook"
    response = api.post(
        "/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "x"}, "callback_url": url}, format="json"
    )
    assert response.status_code == 202
    run_worker_burst()
    drain_callbacks()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.callback_status == CallbackStatus.FAILED
    assert [a.error for a in job.callback_attempts.all()] == ["unresolved: not-yet.test does not resolve"] * 2


@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_public_addresses_pass(dns: FakeDNS) -> None:
    for url in (
        "https://public.test/hook", f"http://{PUBLIC}/", "http://[2606:4700:4700::1111]/",
        "http://[64:ff9b::808:808]/", "http://[::ffff:8.8.8.8]:8080/", "HTTPS://PUBLIC.TEST./x?y=1",
    ):  # fmt: skip
        assert ssrf.check_url(url).addresses, url


@override_settings(CALLBACK_ALLOW_PRIVATE=True, FETCH_READ_TIMEOUT=0.2)
def test_allow_private_lets_loopback_through_and_the_trap_sees_it(trap: socket.socket, dns: FakeDNS) -> None:
    """The control: with the setting on, the same kind of URL does connect, so the trap would have seen it."""
    port = trap.getsockname()[1]
    with pytest.raises(KindError) as error:
        KINDS["fetch"].run({"url": f"http://127.0.0.1:{port}/"}, RunContext(owner_id=0, job_id="control"))
    assert error.value.code == "upstream_unreachable"  # connected, then no answer within the read timeout
    assert connections_seen(trap) == 1
    with pytest.raises(ssrf.UrlForbidden):
        ssrf.check_url(f"http://169.254.169.254:{port}/")  # link-local (cloud metadata) stays forbidden


@pytest.mark.parametrize(
    "host,expected",
    [
        ("0177.0.0.1", "127.0.0.1"), ("0177.1", "127.0.0.1"), ("127.000.000.001", "127.0.0.1"),
        ("0x7f.0x0.0x0.0x1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"), ("192.168.257", "192.168.1.1"), ("0", "0.0.0.0"), ("8.8.8.8.", "8.8.8.8"),
        ("example.com", None), ("1.example", None),
    ],
)  # fmt: skip
def test_ipv4_parser_reads_every_notation(host: str, expected: str | None) -> None:
    """httpx rejects some of these outright; other clients and resolvers (inet_aton) read them all as IPv4."""
    parsed = ssrf.parse_ipv4(host)
    assert (str(parsed) if parsed else None) == expected
