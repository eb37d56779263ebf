"""bench.async_throughput times a drain from when every worker is busy, not from RQ's resumption."""

import pytest

from bench.async_throughput import all_workers_busy_rate


def test_a_drain_is_timed_from_the_last_worker_s_first_claim_after_the_resumption():
    runs = [
        ("a", 0.0, 0.5),  # taken before the suspension was seen: not part of the drain
        ("b", 0.1, 0.6),
        ("a", 10.0, 10.1),  # a wakes first and runs alone for a while
        ("a", 10.1, 10.2),
        ("b", 10.9, 11.0),  # every worker busy from here
        ("a", 10.9, 11.0),
        ("b", 11.0, 11.1),
        ("a", 11.0, 11.1),
    ]
    assert all_workers_busy_rate(runs, resumed=5.0) == pytest.approx(4 / 0.2)


def test_one_worker_is_busy_from_its_first_claim():
    assert all_workers_busy_rate([("a", 1.0, 1.5), ("a", 1.5, 2.0)], resumed=0.5) == pytest.approx(2 / 1.0)
