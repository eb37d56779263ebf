import pytest
from django.core.exceptions import ImproperlyConfigured

from jobsite.env import env_bool, env_int, env_list, env_ports


@pytest.mark.parametrize("raw,value", [("true", True), ("1", True), ("false", False), ("0", False)])
def test_booleans_are_true_false_1_0(monkeypatch: pytest.MonkeyPatch, raw: str, value: bool) -> None:
    monkeypatch.setenv("JOBSITE_TEST_FLAG", raw)
    assert env_bool("JOBSITE_TEST_FLAG", not value) is value


@pytest.mark.parametrize("raw", ["TRUE", "yes", "on", "2", "truthy"])
def test_anything_else_stops_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("JOBSITE_TEST_FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match="JOBSITE_TEST_FLAG"):
        env_bool("JOBSITE_TEST_FLAG", False)


def test_unset_means_the_default_and_numbers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBSITE_TEST_N", raising=False)
    assert env_int("JOBSITE_TEST_N", 7) == 7
    monkeypatch.setenv("JOBSITE_TEST_N", "-1")
    with pytest.raises(ImproperlyConfigured, match="must be >= 0"):
        env_int("JOBSITE_TEST_N", 7)
    monkeypatch.setenv("JOBSITE_TEST_N", "a, b,,c ")
    assert env_list("JOBSITE_TEST_N") == ["a", "b", "c"]


def test_port_sets_are_ports_and_ranges_within_1_65535(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBSITE_TEST_PORTS", raising=False)
    assert env_ports("JOBSITE_TEST_PORTS", "80,443") == {80, 443}
    monkeypatch.setenv("JOBSITE_TEST_PORTS", "80, 8000-8002")
    assert env_ports("JOBSITE_TEST_PORTS", "") == {80, 8000, 8001, 8002}
    for raw in ("0", "65536", "99999", "10-5", "http", "1-2-3"):
        monkeypatch.setenv("JOBSITE_TEST_PORTS", raw)
        with pytest.raises(ImproperlyConfigured, match="JOBSITE_TEST_PORTS"):
            env_ports("JOBSITE_TEST_PORTS", "")
