import pytest
from django.core.exceptions import ImproperlyConfigured

from jobsite.env import env_bool, env_int, env_list, env_pools, env_ports, env_weights


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


def test_pools_are_name_size_pairs_beside_the_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQ_WORKERS", "3")
    monkeypatch.delenv("RQ_POOLS", raising=False)
    assert env_pools("RQ_POOLS") == {"jobs": 3}
    monkeypatch.setenv("RQ_POOLS", " cpu:2, io:4 ")
    assert env_pools("RQ_POOLS") == {"jobs": 3, "cpu": 2, "io": 4}
    for raw in ("cpu", "cpu:0", "cpu:x", "CPU:1", "cpu:1,cpu:2", "callbacks:1", "maintenance:2", "jobs:2", "a b:1"):
        monkeypatch.setenv("RQ_POOLS", raw)
        with pytest.raises(ImproperlyConfigured, match="RQ_POOLS"):
            env_pools("RQ_POOLS")
    monkeypatch.delenv("RQ_WORKERS")
    monkeypatch.setenv("RQ_POOLS", "jobs:5,io:1")  # the default pool sized here instead of by RQ_WORKERS
    assert env_pools("RQ_POOLS") == {"jobs": 5, "io": 1}


def test_priority_weights_name_known_priorities_with_whole_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    default = {"high": 4, "normal": 2, "low": 1}
    monkeypatch.setenv("JOBSITE_TEST_WEIGHTS", "high:10")
    assert env_weights("JOBSITE_TEST_WEIGHTS", default) == {"high": 10, "normal": 2, "low": 1}
    for raw in ("urgent:3", "high:0", "high:1.5", "high"):
        monkeypatch.setenv("JOBSITE_TEST_WEIGHTS", raw)
        with pytest.raises(ImproperlyConfigured, match="JOBSITE_TEST_WEIGHTS"):
            env_weights("JOBSITE_TEST_WEIGHTS", default)
