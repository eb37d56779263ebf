import pytest
from django.test import RequestFactory

from jobsite import client_ip as module


@pytest.fixture
def proxies(settings):
    def use(*cidrs: str) -> None:
        settings.TRUSTED_PROXIES = list(cidrs)
        module._trusted_networks.cache_clear()

    yield use
    module._trusted_networks.cache_clear()


def request(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_header_ignored_without_trusted_proxy(proxies) -> None:
    proxies()
    assert module.client_ip(request("203.0.113.9", "1.2.3.4")) == "203.0.113.9"


def test_right_most_untrusted_hop(proxies) -> None:
    proxies("10.0.0.0/8", "2001:db8::/32")
    assert module.client_ip(request("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.1")) == "198.51.100.7"
    assert module.client_ip(request("2001:db8::1", "2001:db8::5, 2a00::1")) == "2a00::1"
    assert module.client_ip(request("10.0.0.2", "garbage")) == "10.0.0.2"
    assert module.client_ip(request("10.0.0.2")) == "10.0.0.2"


def test_ipv4_mapped_peer_is_normalised(proxies) -> None:
    proxies()
    assert module.client_ip(request("::ffff:192.0.2.1")) == "192.0.2.1"
