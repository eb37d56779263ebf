"""Runs the load: N requests from C concurrent asyncio workers sharing one httpx.AsyncClient.

Why asyncio rather than C threads: on a 2-core machine that also hosts the service, 50 Python threads
contend for the GIL, and a thread whose response has arrived can wait a switch interval (5 ms) or more
before it may take its timestamp, a delay that is invisible in the figures. One event loop is one thread:
whatever delay it adds between a response arriving and its timestamp is loop lag, which a monitor task
measures and the report prints next to the latencies. The connection pool holds C connections, so no
request ever waits for a free connection inside the client: the clock runs only while the request is
on the wire or in the server.

`both` runs the sync phase, then the async phase, one after the other, so that each mode's latency and
throughput are measured without the other's load mixed in.
"""

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, replace

import httpx

from loadgen.dialect import ASYNC, SYNC, Dialect, JobSpec, dialect_for
from loadgen.progress import Progress
from loadgen.receiver import Arrival, WebhookReceiver
from loadgen.stats import PhaseResult, Sample

LAG_PROBE_INTERVAL = 0.01
"""Seconds the loop-lag monitor sleeps; any overshoot is time the loop could not attend to responses."""

CALLBACK_CHECK_INTERVAL = 0.05
"""Seconds between checks of the receiver while waiting for callbacks (local, never the service)."""


@dataclass(frozen=True)
class RunConfig:
    """One run's parameters, as given on the command line."""

    url: str
    requests: int
    concurrency: int
    modes: tuple[str, ...]
    spec: JobSpec
    headers: dict[str, str]
    compat: bool = False
    timeout: float = 30.0
    callback_host: str = "127.0.0.1"
    callback_port: int = 0
    callback_wait: float = 30.0
    webhook_secret: str | None = None


def run(config: RunConfig, progress: Progress) -> list[PhaseResult]:
    """Run every phase of the configuration, starting the webhook receiver when a phase is async."""
    dialect = dialect_for(compat=config.compat)
    if ASYNC not in config.modes:
        return [asyncio.run(_phase(config, dialect, mode, None, progress)) for mode in config.modes]
    receiver = WebhookReceiver(
        host=config.callback_host,
        port=config.callback_port,
        secret=config.webhook_secret,
        id_field=dialect.callback_id_field,
    )
    with receiver:
        results = []
        for mode in config.modes:
            receiver.reset()
            results.append(asyncio.run(_phase(config, dialect, mode, receiver if mode == ASYNC else None, progress)))
        return results


async def _phase(
    config: RunConfig, dialect: Dialect, mode: str, receiver: WebhookReceiver | None, progress: Progress
) -> PhaseResult:
    n, c = config.requests, config.concurrency
    label = f"{mode}{' (compat)' if config.compat else ''}"
    callback_url = receiver.url if receiver is not None else None
    samples: list[Sample] = []
    sent_at: dict[str, float] = {}
    indices = itertools.count()
    lag: list[float] = []
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)

    async with httpx.AsyncClient(
        base_url=config.url, headers=config.headers, timeout=config.timeout, limits=limits, trust_env=False
    ) as client:
        started = time.perf_counter()

        async def worker() -> None:
            while (index := next(indices)) < n:
                request = client.build_request(
                    "POST", dialect.path(mode), json=dialect.body(config.spec, mode, index, callback_url)
                )
                status_code: int | None = None
                error: str | None = None
                job_id: str | None = None
                begun = time.perf_counter()
                try:
                    response = await client.send(request)
                    finished = time.perf_counter()
                    status_code = response.status_code
                    job_id = dialect.accepted(mode, status_code, _json_or_none(response))
                except httpx.HTTPError as exc:
                    finished = time.perf_counter()
                    error = type(exc).__name__
                if job_id is not None:
                    sent_at[job_id] = begun
                samples.append(
                    Sample(
                        index,
                        begun - started,
                        (finished - begun) * 1000,
                        status_code,
                        error,
                        job_id is not None,
                        job_id,
                    )
                )
                failed = len(samples) - len(sent_at)
                progress.update(
                    label, len(samples), n, f"{len(samples) / (finished - started):.0f} req/s, {failed} failed"
                )

        monitor = asyncio.create_task(_watch_loop_lag(lag))
        await asyncio.gather(*(worker() for _ in range(c)))
        duration = time.perf_counter() - started
        monitor.cancel()
    progress.finish(label, n, n, f"{n / duration:.0f} req/s, {len(samples) - len(sent_at)} failed")

    samples.sort(key=lambda sample: sample.index)
    if receiver is None:
        return PhaseResult(mode, config.compat, c, duration, samples, 0, 0.0, None, lag)
    await _wait_for_callbacks(receiver, set(sent_at), config.callback_wait, progress)
    # One snapshot at the end of the wait: a callback arriving later does not count as received.
    arrivals, counts = receiver.snapshot(set(sent_at))
    samples = [_with_callback(sample, arrivals, sent_at) for sample in samples]
    return PhaseResult(mode, config.compat, c, duration, samples, len(sent_at), config.callback_wait, counts, lag)


async def _wait_for_callbacks(receiver: WebhookReceiver, job_ids: set[str], wait: float, progress: Progress) -> None:
    deadline = time.perf_counter() + wait
    while (got := receiver.received(job_ids)) < len(job_ids) and time.perf_counter() < deadline:
        progress.update("callbacks", got, len(job_ids), f"{deadline - time.perf_counter():.0f} s left")
        await asyncio.sleep(CALLBACK_CHECK_INTERVAL)
    progress.finish("callbacks", receiver.received(job_ids), len(job_ids))


def _with_callback(sample: Sample, arrivals: dict[str, Arrival], sent_at: dict[str, float]) -> Sample:
    """The sample with its time-to-callback: callback arrival minus the moment its request was sent."""
    if sample.job_id is None or sample.job_id not in arrivals:
        return sample
    return replace(sample, callback_ms=(arrivals[sample.job_id].at - sent_at[sample.job_id]) * 1000)


async def _watch_loop_lag(lag: list[float]) -> None:
    while True:
        expected = time.perf_counter() + LAG_PROBE_INTERVAL
        await asyncio.sleep(LAG_PROBE_INTERVAL)
        lag.append(max(0.0, time.perf_counter() - expected) * 1000)


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


__all__ = ["ASYNC", "SYNC", "RunConfig", "run"]
