"""SSRF guard: a corpus of forbidden URLs refused at submission, by the fetch kind and at delivery, proven
inside a network namespace (tests/netns.py) where every forbidden address sits on `lo` behind a trap that
counts connections; names resolve through a hosts file of the namespace's own. Nothing leaves loopback.
"""

import ipaddress
import os
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import User
from jobs import ssrf
from jobs.kinds import KINDS, KindError, RunContext
from jobs.models import CallbackStatus, Job, JobMode, JobStatus, KindSettings
from jobs.webhooks import webhook_deliver
from tests.conftest import run_worker_burst
from tests.netns import Trap, netns_unavailable, rewrite_hosts, run_in_netns
from tests.webhook_helpers import FakeDNS, drain_callbacks

pytestmark = pytest.mark.django_db

NETNS_PROBLEM = netns_unavailable()
needs_netns = pytest.mark.skipif(NETNS_PROBLEM is not None, reason=f"no network namespace: {NETNS_PROBLEM}")

PUBLIC = "93.184.216.34"
"""A public address; inside the namespace it sits on `lo`, so reaching it is reaching a local listener."""

TRAP_PORTS = (80, 443, 8080, 22, 25, 3306, 11211)
"""Ports the trap listens on (any address): the corpus URLs' ports, allowed or not."""

PORT = 8080

HOSTS = {
    "public.test": PUBLIC,
    "internal.test": "10.0.0.5",
    "loopback.test": "127.0.0.1",
    "metadata.test": "169.254.169.254",
    "cgnat.test": "100.64.1.2",
    "dummy.test": "192.0.0.8",
    "relay.test": "192.88.99.1",
    "sitelocal.test": "fec0::1",
    "doc6.test": "3fff::1",
    "ula.test": "fd00::5",
    "v6loop.test": "::1",
    "mapped.test": "::ffff:127.0.0.1",
    "nat64.test": "64:ff9b::c058:6301",
    "sixtofour.test": "2002:c058:6301::1",
    "benchmark.test": "198.18.0.7",
}
"""The namespace's hosts file: every name but public.test resolves to a forbidden address."""

FORBIDDEN_IPV4 = [
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.254",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "169.254.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.0.0.1",
    "192.0.0.8",
    "192.0.0.100",
    "192.0.0.170",
    "192.0.0.171",
    "192.0.2.1",
    "192.88.99.1",
    "192.88.99.254",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.254",
    "198.51.100.1",
    "203.0.113.1",
    "240.0.0.1",
    "250.1.2.3",
]
"""One or two unicast addresses in every forbidden IPv4 block of the IANA special-purpose registry and beyond."""

UNASSIGNABLE_IPV4 = ["0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255"]
"""Forbidden addresses that cannot sit on an interface (any address, multicast, broadcast)."""

FORBIDDEN_IPV6 = [
    "::1",
    "::2",
    "::a00:1",
    "::7f00:1",
    "100::1",
    "100:0:0:1::1",
    "2001::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:1::4",
    "2001:2::1",
    "2001:10::1",
    "2001:db8::1",
    "3fff::1",
    "3fff:fff::1",
    "5f00::1",
    "4000::1",
    "64:ff9b:1::a00:1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "feff::1",
    "2002:7f00:1::1",
    "2002:c0a8:101::1",
    "2002:c058:6301::1",
    "2002:c000:8::1",
    "64:ff9b::c058:6301",
    "64:ff9b::c000:8",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
]
"""Forbidden IPv6 unicast: every IANA special-purpose block, reserved space, and IPv4 embedded in 6to4/NAT64."""

UNASSIGNABLE_IPV6 = ["::", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:192.0.0.8", "ff02::1", "ff0e::1"]
"""IPv6 spellings that cannot sit on an interface (mapped IPv4 reaches the IPv4 address itself)."""


def _notations(address: str) -> list[str]:
    """Other ways URL parsers and inet_aton read an IPv4 address: decimal, hex, octal, short forms."""
    a, b, c, d = (int(part) for part in address.split("."))
    value = int(ipaddress.IPv4Address(address))
    return [
        str(value),
        hex(value),
        f"0{value:o}",
        f"{a}.{(b << 16) + (c << 8) + d}",
        f"{a}.{b}.{(c << 8) + d}",
        f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}",
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
        f"{address}.",
    ]


def corpus() -> list[str]:
    """At least 80 forbidden URLs: every block, every notation, names in the hosts file, bad ports and schemes."""
    hosts = FORBIDDEN_IPV4 + UNASSIGNABLE_IPV4 + [f"[{a}]" for a in FORBIDDEN_IPV6 + UNASSIGNABLE_IPV6]
    hosts += _notations("127.0.0.1") + _notations("192.0.0.8") + _notations("192.88.99.1") + _notations("10.0.0.1")
    hosts += ["0x7f.1", "0177.1", "127.000.000.001", "0", "0x0", "[0:0:0:0:0:0:0:1]", "[::ffff:7f00:1]"]
    hosts += ["[64:ff9b::192.88.99.1]", "[64:ff9b::127.0.0.1]", "[::127.0.0.1]", "[::ffff:169.254.169.254]"]
    hosts += ["localhost", "LOCALHOST", "localhost.", "api.localhost", "ip6-localhost"]
    hosts += [name for name in HOSTS if name != "public.test"] + ["DUMMY.TEST.", "Relay.Test"]
    hosts += ["%31%32%37.0.0.1", "127.0.0.1.1", "0x100000000", "256.0.0.1", "08.0.0.1"]
    urls = [f"http://{host}:{PORT}/hook?token=secret" for host in hosts]
    urls += [f"https://{host}/" for host in ("127.1", "192.0.0.8", "[fec0::1]", "[3fff::1]", "dummy.test")]
    urls += [f"http://{host}/" for host in ("192.88.99.1", "[2002:c058:6301::1]", "sitelocal.test", "0300.0.0.010")]
    urls += [
        "http://public.test:99999/",
        "http://public.test:22/",
        "http://public.test:25/",
        "http://public.test:3306/",
        "http://public.test:11211/",
        f"http://{PUBLIC}:0/",
        f"https://{PUBLIC}:65536/",
        "http://[2606:4700::1]:6379/",
        f"ftp://{PUBLIC}/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:8080/",
        "javascript:alert(1)",
        "dict://public.test:8080/",
        "ws://public.test:8080/",
        "http://user:pass@public.test:8080/",
        "http://user@public.test:8080/",
        "not a url",
        "http:///nohost",
    ]
    return urls


def _lo_addresses() -> list[str]:
    return [PUBLIC, "2606:4700::1", *FORBIDDEN_IPV4, *FORBIDDEN_IPV6, "100.64.1.2", "10.0.0.5", "fd00::5", "198.18.0.7"]


def _check_everywhere(api: APIClient, user: User, urls: list[str]) -> dict[str, Any]:
    """Inside the namespace: each URL through submission, the fetch kind and delivery; what went wrong."""
    trap = Trap(TRAP_PORTS)
    failures = []
    hash_job = {"kind": "hash", "input": {"data": "x", "iterations": 1}}
    context = RunContext(owner_id=0, job_id="corpus")
    for url in urls:
        texts = []
        submitted = api.post("/api/v1/jobs/async/", {**hash_job, "callback_url": url}, format="json")
        texts.append(submitted.content.decode())
        if submitted.status_code != 400 or submitted.json().get("code") != "callback_url_forbidden":
            failures.append((url, "callback submission", submitted.status_code))
        fetch = api.post("/api/v1/jobs/async/", {"kind": "fetch", "input": {"url": url}}, format="json")
        texts.append(fetch.content.decode())
        if fetch.status_code != 400:
            failures.append((url, "fetch submission", fetch.status_code))
        try:
            KINDS["fetch"].run({"url": url}, context)
            failures.append((url, "fetch run", "no error"))
        except KindError as error:
            texts.append(error.message)
            if error.code != "url_forbidden":
                failures.append((url, "fetch run", error.code))
        job = Job.objects.create(
            owner=user,
            endpoint="jobs.async",
            kind="hash",
            mode=JobMode.ASYNC,
            status=JobStatus.SUCCEEDED,
            callback_url=url,
            callback_status=CallbackStatus.PENDING,
            cost=1,  # a paid job: the free-delivery budget would defer the corpus' later attempts
        )
        outcome = webhook_deliver(job_id=job.pk, n=1, retries_left=3)
        error = job.callback_attempts.get().error
        texts.append(error)
        if outcome != "failed" or not error.startswith("callback_url_forbidden"):
            failures.append((url, "delivery", outcome, error))
        name = url.split("//", 1)[-1].split(":", 1)[0].split("/", 1)[0].lower().rstrip(".")
        if name in HOSTS and any(HOSTS[name] in text for text in texts):
            failures.append((url, "refusal echoes the resolved address", texts))
    return {"failures": failures, "trap_hits": trap.count(), "where": trap.hits}


@pytest.mark.django_db(transaction=True)
@needs_netns
@override_settings(CALLBACK_ALLOW_PRIVATE=False, FETCH_READ_TIMEOUT=0.5, CALLBACK_READ_TIMEOUT=0.5)
def test_forbidden_corpus_is_refused_everywhere_with_zero_trap_hits(api: APIClient, user: User) -> None:
    urls = corpus()
    assert len(urls) >= 80 and len(set(urls)) == len(urls)
    report = run_in_netns(_check_everywhere, api, user, urls, addresses=_lo_addresses(), hosts=HOSTS)
    print(f"SSRF corpus: {len(urls)} URLs, {report['trap_hits']} trap hits")  # the figure for CI logs
    assert report["failures"] == []
    assert report["trap_hits"] == 0, report["where"]


def _control(api: APIClient) -> dict[str, Any]:
    """The same harness with allowed URLs: the trap does see the connections the guard lets through."""
    trap = Trap(TRAP_PORTS)
    outcomes = []
    for url in (f"http://public.test:{PORT}/", "http://[2606:4700::1]/", f"http://{PUBLIC}:{PORT}/?token=x"):
        try:
            KINDS["fetch"].run({"url": url}, RunContext(owner_id=0, job_id="control"))
        except KindError as error:
            outcomes.append(error.code)
    hash_job = {"kind": "hash", "input": {"data": "x", "iterations": 1}, "callback_url": "http://public.test/"}
    accepted = api.post("/api/v1/jobs/async/", hash_job, format="json").status_code
    return {"outcomes": outcomes, "trap_hits": trap.count(), "accepted": accepted}


@pytest.mark.django_db(transaction=True)
@needs_netns
@override_settings(CALLBACK_ALLOW_PRIVATE=False, FETCH_READ_TIMEOUT=0.3)
def test_control_allowed_urls_do_reach_the_trap(api: APIClient) -> None:
    report = run_in_netns(_control, api, addresses=_lo_addresses(), hosts=HOSTS)
    # each connected and then got no answer within the read timeout: the trap accepts but never replies
    assert report == {"outcomes": ["upstream_unreachable"] * 3, "trap_hits": 3, "accepted": 202}


def _allow_private_control() -> dict[str, Any]:
    trap = Trap(TRAP_PORTS)
    reached = []
    for url in ("http://127.0.0.1:8080/", "http://loopback.test:8080/", "http://internal.test:8080/"):
        with pytest.raises(KindError):
            KINDS["fetch"].run({"url": url}, RunContext(owner_id=0, job_id="control"))
        reached.append(trap.count())
    refused = []
    for url in ("http://metadata.test:8080/", "http://cgnat.test:8080/", "http://192.0.0.8:8080/", "http://[fec0::1]/"):
        with pytest.raises(ssrf.UrlForbidden) as error:
            ssrf.check_url(url)
        refused.append(error.value.reason)
    return {"reached": reached, "refused": refused, "trap_hits": trap.count()}


@pytest.mark.django_db(transaction=True)
@needs_netns
@override_settings(CALLBACK_ALLOW_PRIVATE=True, FETCH_READ_TIMEOUT=0.3)
def test_allow_private_means_only_loopback_and_private_ranges() -> None:
    report = run_in_netns(_allow_private_control, addresses=_lo_addresses(), hosts=HOSTS)
    assert report["reached"] == [1, 2, 3]
    assert report["trap_hits"] == 3  # link-local, shared, dummy and site-local stayed refused
    assert [reason.rsplit(": ", 1)[1] for reason in report["refused"]] == [
        "link-local (RFC 3927)",
        "shared address space (RFC 6598)",
        "IPv4 dummy address (RFC 7600)",
        "deprecated site-local (RFC 3879)",
    ]


def _rebind_end_to_end(api: APIClient) -> dict[str, Any]:
    """Submission while the names are public, then the hosts file re-points them before the job and delivery run."""
    trap = Trap(TRAP_PORTS)
    KindSettings.objects.update_or_create(kind="hash", defaults={"callback_backoff": 0.01})
    hooked = api.post(
        "/api/v1/jobs/async/",
        {"kind": "hash", "input": {"data": "x"}, "callback_url": f"http://rebind.test:{PORT}/hook"},
        format="json",
    )
    fetched = api.post(
        "/api/v1/jobs/async/", {"kind": "fetch", "input": {"url": "http://rebind2.test/"}}, format="json"
    )
    rewrite_hosts({**HOSTS, "rebind.test": "192.0.0.8", "rebind2.test": "fec0::1"})
    run_worker_burst()
    drain_callbacks()
    hook_job = Job.objects.get(pk=hooked.json()["id"])
    fetch_job = Job.objects.get(pk=fetched.json()["id"])
    return {
        "submitted": [hooked.status_code, fetched.status_code],
        "callback_status": hook_job.callback_status,
        "attempts": [attempt.error for attempt in hook_job.callback_attempts.all()],
        "fetch": [fetch_job.status, fetch_job.error_code, fetch_job.error_message],
        "trap_hits": trap.count(),
    }


@pytest.mark.django_db(transaction=True)
@needs_netns
@override_settings(CALLBACK_ALLOW_PRIVATE=False, FETCH_READ_TIMEOUT=0.5, CALLBACK_READ_TIMEOUT=0.5)
def test_names_repointed_between_submission_and_delivery_are_refused_end_to_end(api: APIClient) -> None:
    hosts = {**HOSTS, "rebind.test": PUBLIC, "rebind2.test": PUBLIC}
    report = run_in_netns(_rebind_end_to_end, api, addresses=_lo_addresses(), hosts=hosts)
    assert report["submitted"] == [202, 202]  # public at submission
    assert report["callback_status"] == CallbackStatus.FAILED
    # forbidden is final (no retries), names the rule and never the address the name resolved to
    assert report["attempts"] == [
        "callback_url_forbidden: the host name resolves to an address in a forbidden range: "
        "IPv4 dummy address (RFC 7600)"
    ]
    status, code, message = report["fetch"]
    assert (status, code) == (JobStatus.FAILED, "url_forbidden") and "deprecated site-local" in message
    assert "fec0" not in message and "192.0.0.8" not in report["attempts"][0]
    assert report["trap_hits"] == 0


def _tls_pool_probe(ca_file: str, chain_file: str) -> dict[str, Any]:
    """A TLS server for a.test only; b.test is the same address. Each name must get its own verified connection."""
    os.environ["SSL_CERT_FILE"] = ca_file  # httpx's default context trusts this CA (trust_env)
    ssrf.outbound_client.cache_clear()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file)
    peers: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the connection is pooled

        def do_GET(self) -> None:
            peers.append(str(self.client_address))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results = []
    for url in ("https://a.test:8443/", "https://b.test:8443/", "https://a.test:8443/"):
        try:
            with ssrf.guarded_stream("GET", url) as response:
                response.read()  # a fully read response leaves its connection in the pool
                results.append(response.status_code)
        except httpx.ConnectError as exc:
            results.append("certificate" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else str(exc))
    server.shutdown()
    return {"results": results, "connections": len(set(peers))}


@pytest.mark.django_db(transaction=True)
@needs_netns
@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_pool_is_keyed_by_host_name_so_tls_verifies_each_name(tmp_path: Path) -> None:
    """Regression: the pool was keyed by the pinned IP, so b.test reused a.test's connection and certificate."""
    authority = trustme.CA()
    cert = authority.issue_cert("a.test")
    ca_file, chain_file = str(tmp_path / "ca.pem"), str(tmp_path / "a.test.pem")
    authority.cert_pem.write_to_path(ca_file)
    cert.private_key_and_cert_chain_pem.write_to_path(chain_file)
    hosts = {"a.test": PUBLIC, "b.test": PUBLIC}
    report = run_in_netns(_tls_pool_probe, ca_file, chain_file, addresses=[PUBLIC], hosts=hosts)
    # a.test verified and reused (one connection); b.test's TLS handshake checked b.test and failed
    assert report == {"results": [200, "certificate", 200], "connections": 1}


@pytest.mark.parametrize(
    "url,rule",
    [
        ("http://192.0.0.8/", "IPv4 dummy address (RFC 7600)"),
        ("http://[fec0::1]/", "deprecated site-local (RFC 3879)"),
        ("http://[feff::1]/", "deprecated site-local (RFC 3879)"),
        ("http://192.88.99.1/", "deprecated 6to4 relay anycast (RFC 7526)"),
        ("http://[2002:c058:6301::1]/", "6to4 address embedding deprecated 6to4 relay anycast (RFC 7526)"),
        ("http://[64:ff9b::c058:6301]/", "NAT64 address embedding deprecated 6to4 relay anycast (RFC 7526)"),
        ("http://[64:ff9b::192.0.0.8]/", "NAT64 address embedding IPv4 dummy address (RFC 7600)"),
        ("http://[::ffff:192.0.0.8]/", "IPv4-mapped address embedding IPv4 dummy address (RFC 7600)"),
        ("http://[3fff::1]/", "documentation (RFC 9637)"),
        ("http://[5f00::1]/", "segment routing SIDs (RFC 9602)"),
        ("http://[100:0:0:1::1]/", "dummy IPv6 prefix (RFC 9780)"),
        ("http://[4000::1]/", "reserved IPv6 address space (RFC 4291, outside 2000::/3)"),
        ("http://[2001:1::4]/", "IETF protocol assignments (RFC 2928)"),
        ("http://192.0.0.100/", "IETF protocol assignments (RFC 6890)"),
        (f"http://{PUBLIC}:99999/", None),
        (f"http://{PUBLIC}:6379/", None),
        (f"http://{PUBLIC}:8/", None),
    ],
)
@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_forms_that_escaped_the_old_guard_are_refused_by_their_rule(url: str, rule: str | None) -> None:
    """Regressions: each passed the guard built on Python 3.11's ipaddress flags, or had no port check."""
    with pytest.raises(ssrf.UrlForbidden) as error:
        ssrf.check_url(url)
    expected = f"the address is in a forbidden range: {rule}" if rule else f"port {httpx.URL(url).port} is not allowed"
    assert error.value.reason.startswith(expected), error.value.reason


@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_callback_url_with_port_99999_is_a_400_problem_at_submission(api: APIClient) -> None:
    """Literal address, no lookup, no connection: refused before anything is stored."""
    body = {"kind": "hash", "input": {"data": "x"}, "callback_url": f"http://{PUBLIC}:99999/"}
    response = api.post("/api/v1/jobs/async/", body, format="json")
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "callback_url_forbidden"
    assert "port is a number from 1 to 65535" in response.json()["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "address",
    [
        "192.0.0.9",
        "192.0.0.10",
        "2001:1::1",
        "2001:1::2",
        "2001:3::1",
        "2001:4:112::1",
        "2001:20::1",
        PUBLIC,
        "2606:4700:4700::1111",
        "64:ff9b::808:808",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "192.31.196.1",
    ],
)
def test_registry_exceptions_and_public_addresses_are_allowed(address: str) -> None:
    assert ssrf.forbidden_reason(ipaddress.ip_address(address), allow_private=False) is None


@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_public_urls_pass_without_any_lookup_leaving_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssrf, "resolver", FakeDNS({"public.test": [PUBLIC]}))
    for url in (
        "https://public.test/hook",
        f"http://{PUBLIC}/",
        "http://[2606:4700:4700::1111]/",
        "http://[64:ff9b::808:808]/",
        "http://[::ffff:8.8.8.8]:8080/",
        "HTTPS://PUBLIC.TEST./x?y=1",
        "http://public.test:1024/",
        "http://public.test:65535/",
    ):
        assert ssrf.check_url(url).addresses, url


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_ALLOW_PRIVATE=False)
def test_unresolvable_name_is_accepted_then_retried_and_failed(api: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssrf, "resolver", FakeDNS())  # no name resolves, and no question reaches real DNS
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


@pytest.mark.parametrize(
    "host,expected",
    [
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0", "0.0.0.0"),
        ("8.8.8.8.", "8.8.8.8"),
        ("example.com", None),
        ("1.example", None),
    ],
)
def test_ipv4_parser_reads_every_notation(host: str, expected: str | None) -> None:
    """httpx rejects some of these outright; other clients and resolvers (inet_aton) read them all as IPv4."""
    parsed = ssrf.parse_ipv4(host)
    assert (str(parsed) if parsed else None) == expected


def _interfaces() -> dict[str, Any]:
    with open("/proc/net/route") as routes, open("/proc/net/ipv6_route") as routes6:
        ipv4_routes = routes.read().splitlines()[1:]
        ipv6_routes = [line for line in routes6.read().splitlines() if not line.rstrip().endswith(" lo")]
    with open("/etc/hosts") as hosts:
        return {
            "interfaces": [name for _, name in socket.if_nameindex()],
            "routes_off_lo": [line for line in ipv4_routes if not line.startswith("lo")] + ipv6_routes,
            "hosts": hosts.read(),
        }


@pytest.mark.django_db(transaction=True)
@needs_netns
def test_the_namespace_has_only_loopback_and_its_own_hosts_file() -> None:
    """The harness itself: no interface but lo and no route off it, so a guard failure cannot leave the host."""
    report = run_in_netns(_interfaces, addresses=["10.0.0.5"], hosts={"internal.test": "10.0.0.5"}, forward=[])
    assert report["interfaces"] == ["lo"] and report["routes_off_lo"] == []
    assert "10.0.0.5 internal.test" in report["hosts"]
    with open("/etc/hosts") as hosts:
        assert "internal.test" not in hosts.read()  # the bind mount stayed inside the namespace
