"""The versus-original benchmark reads the original load generator's printed report correctly.

tests/data/load_generator_report.txt is the real output of one run (n=100, c=20, against Jobsite) of the
original's load_generator.py through bench/versus_original.py's timing wrapper (its timing line given the
sync phase's generator CPU by hand, a field the wrapper added later)."""

from pathlib import Path

import pytest

from bench.versus_original import FIGURES, Figure, format_table, parse_report, summarize

REPORT = (Path(__file__).parent / "data" / "load_generator_report.txt").read_text()


def test_parse_report_reads_both_phases_and_the_timing_line():
    parsed = parse_report(REPORT)

    assert parsed["sync"] == {
        "total": 100,
        "success": 100,
        "failed": 0,
        "latency_p50_ms": 97.54,
        "latency_p95_ms": 186.13,
        "latency_p99_ms": 206.56,
        "latency_min_ms": 23.66,
        "latency_max_ms": 222.82,
        "latency_avg_ms": 101.51,
        "wall_s": pytest.approx(0.5693894129999535),
        "generator_cpu_s": 0.21,
    }
    async_ = parsed["async"]
    assert (async_["total"], async_["success"], async_["failed"]) == (100, 100, 0)
    assert (async_["latency_p50_ms"], async_["latency_p99_ms"]) == (183.80, 396.01)
    assert (async_["callback_p50_ms"], async_["callback_p95_ms"], async_["callback_p99_ms"]) == (
        1885.11,
        2045.35,
        2090.42,
    )
    assert async_["callbacks_received"] == 100
    assert async_["all_callbacks_wall_s"] == pytest.approx(2.7886063659999536)


def test_missing_callbacks_leave_no_all_callbacks_wall():
    parsed = parse_report(REPORT.replace("Callbacks: 100/100 (100.0%)", "Callbacks: 97/100 (97.0%)"))

    assert parsed["async"]["callbacks_received"] == 97
    assert parsed["async"]["all_callbacks_wall_s"] is None


def test_a_report_without_callbacks_counts_none_received():
    sync_only_and_async_without_callbacks = REPORT.split("  Time-to-Callback (ms):")[0] + "=" * 60 + "\n"

    parsed = parse_report(sync_only_and_async_without_callbacks)

    assert parsed["async"]["callbacks_received"] == 0
    assert "callback_p50_ms" not in parsed["async"]
    assert parsed["async"]["all_callbacks_wall_s"] is None


def test_summary_ranges_ratios_and_targets():
    run = parse_report(REPORT)
    slower = parse_report(REPORT.replace("p50:       97.54", "p50:       48.77"))
    rounds = [{"original": slower, "jobsite": run}, {"original": slower, "jobsite": run}]

    rows = {row["figure"]: row for row in summarize(rounds)}

    p50 = rows["sync latency p50 (ms)"]
    assert p50["original"] == [48.77, 48.77] and p50["jobsite"] == [97.54, 97.54]
    assert p50["ratio"] == pytest.approx(2.0)
    assert p50["verdict"] == "not met"
    assert rows["sync latency p99 (ms)"]["verdict"] == "not met"  # 1x, target <= 0.2x
    assert rows["time-to-callback p50 (ms)"]["verdict"] == "not met"  # 1885 ms, target <= 50 ms
    assert len(rows) == len(FIGURES)
    assert "| sync latency p50 (ms) | 48.8 | 97.5 | 2.00x | <= 1x | not met |" in format_table(list(rows.values()))


def test_a_round_with_missing_callbacks_is_left_out_of_the_all_callbacks_wall_and_said_so():
    run = parse_report(REPORT)
    lost = parse_report(REPORT.replace("Callbacks: 100/100 (100.0%)", "Callbacks: 97/100 (97.0%)"))
    rounds = [{"original": lost, "jobsite": run}, {"original": run, "jobsite": run}]

    row = next(row for row in summarize(rounds) if row["figure"] == "async: all callbacks in, wall (s)")

    assert row["original"] == [pytest.approx(2.7886063659999536)] and len(row["jobsite"]) == 2
    assert row["ratio"] == pytest.approx(1.0)
    assert row["verdict"] == "not met (of the rounds with all callbacks: 1, 2)"
    rows = {row["figure"]: row for row in summarize(rounds)}
    assert rows["time-to-callback p99 (ms)"]["verdict"] == "not met (callbacks lost: percentiles of those received)"
    assert rows["sync latency p99 (ms)"]["verdict"] == "not met"
    no_round = next(row for row in summarize(rounds[:1]) if row["figure"] == "async: all callbacks in, wall (s)")
    assert no_round["verdict"] == "no round to compare"


@pytest.mark.parametrize(
    ("target", "original", "jobsite", "verdict"),
    [
        (">= 3x", 100.0, 300.0, "met"),
        (">= 3x", 100.0, 299.0, "not met"),
        ("<= 0.5x", 8.0, 4.0, "met"),
        ("<= 0.5x", 8.0, 4.1, "not met"),
        ("<= 50 ms", 3000.0, 50.0, "met"),
        ("<= 50 ms", 10.0, 51.0, "not met"),
        ("", 1.0, 2.0, ""),
    ],
)
def test_targets_are_ratios_or_absolute_milliseconds(target, original, jobsite, verdict):
    assert Figure("figure", lambda run: None, target).met(original, jobsite) == verdict
