"""`Client` (blocking, httpx.Client) and `AsyncClient` (asyncio, httpx.AsyncClient).

Both drive the same flows (`_protocol`); each public method is a one-line hand-over, so the two cannot
disagree about paths, bodies, errors or polling.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack, cast

import httpx

from jobsite_client import _protocol as protocol
from jobsite_client._protocol import Call, DeliveryFilters, Flow, JobFilters, Paged, Pause, SubmitOptions
from jobsite_client.models import (
    Balance,
    Batch,
    BatchCreated,
    BatchJob,
    BatchJobPage,
    BatchPage,
    Job,
    JobPage,
    Limits,
    Me,
    StreamEvent,
    Upload,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookSecret,
    WebhookTestResult,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
"""Seconds per request (connect, read, write and pool each); a sync job holds its request while it runs."""

try:
    USER_AGENT = f"jobsite-client/{version('jobsite-client')}"
except PackageNotFoundError:  # imported from a source tree, not installed
    USER_AGENT = "jobsite-client"
"""Sent with every request, so that the service's logs tell this client's traffic apart."""


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Accept": "application/json", "User-Agent": USER_AGENT}


def _request(http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
    return http.build_request(
        call.method, call.path, params=call.params, json=call.json, content=call.content, headers=call.headers
    )


class Client:
    """The Jobsite API over one pooled HTTP connection set; use as a context manager or call `close()`.

    Errors raise `jobsite_client.errors.APIError` subclasses; transport failures raise `httpx.HTTPError`.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def _drive(self, flow: Flow[T]) -> T:
        step = next(flow)
        while True:
            try:
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(self._http.send(_request(self._http, step)))
            except StopIteration as done:
                return cast(T, done.value)  # a flow returns its declared result

    def run(self, kind: str, input: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Run a job now (POST /jobs/sync/): the succeeded job; a failed one raises `JobFailed`."""
        return self._drive(protocol.run(kind, input, idempotency_key))

    def submit(
        self,
        kind: str,
        input: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """Queue a job (POST /jobs/async/): the job, `queued` (or final at once when cached); with `run_at`
        ahead `scheduled`, with `depends_on` `waiting`. Options: `callback_url`, `webhook_events` (`job.started`,
        `job.progress`, sent to `callback_url` besides the final webhook), `wait` (seconds the service may hold
        the request, `Prefer: wait=N`: the final job if it finished in time), `run_at`, `depends_on`,
        `allow_dependency_failure`, `priority` (`high|normal|low` up to the policy's max_priority; above:
        `PermissionDenied`, code `priority_not_allowed`)."""
        return self._drive(protocol.submit(kind, input, idempotency_key, options))

    def get(self, job_id: str) -> Job:
        """One job with its webhook delivery attempts."""
        return self._drive(protocol.get(job_id))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued, scheduled or waiting job (`canceled`, refunded in full) or ask a running async one to
        stop (`canceling`, then `canceled` at its worker's next check; not refunded); `Conflict` when it is final
        or a sync job."""
        return self._drive(protocol.cancel(job_id))

    def wait(self, job_id: str, timeout: float = 60.0, *, poll_interval: float = protocol.POLL_INTERVAL) -> Job:
        """Poll until the job is final; `WaitTimeout` (with the last state) after `timeout` seconds."""
        return self._drive(protocol.wait(job_id, timeout, poll_interval))

    def events(self, job_id: str) -> Iterator[StreamEvent]:
        """The job's events as they happen (`status`, `progress`), the last one `job` (the final job).

        Each stream the service sends lasts a bounded time; this reconnects with Last-Event-ID (after the
        `retry:` it asked for), so no event comes twice and none is missed.
        """
        parser = protocol.EventStreamParser()
        while True:
            call = protocol.events_call(job_id, parser.last_event_id)
            with self._http.stream(call.method, call.path, headers=call.headers) as response:
                if not response.is_success:
                    response.read()
                    protocol.checked(response)
                if response.status_code == protocol.NO_CONTENT:
                    return
                for line in response.iter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
                        if event.event == protocol.FINAL_STREAM_EVENT:
                            return
            time.sleep((parser.retry_ms or 0) / 1000)

    def page(self, **filters: Unpack[JobFilters]) -> JobPage:
        """The first page of the caller's jobs, newest first (staff: everyone's)."""
        return self._drive(protocol.page(protocol.page_call(filters), JobPage))

    def jobs(self, **filters: Unpack[JobFilters]) -> Iterator[Job]:
        """Every job matching the filters, newest first, fetching page after page as iteration goes."""
        return self._every(protocol.page_call(filters), JobPage)

    def _every(self, call: Call | None, cls: type[Paged[T]]) -> Iterator[T]:
        """Each item of a cursor-paginated list, fetching page after page as iteration goes."""
        while call is not None:
            current = self._drive(protocol.page(call, cls))
            yield from current.results
            call = protocol.next_page_call(call, current.next)

    def export(
        self,
        format: str = "jsonl",
        *,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> Iterator[str]:
        """The caller's jobs as JSON lines or CSV rows (first the header), streamed line by line."""
        return self._lines(protocol.export_call(format, created_after, created_before))

    def _lines(self, call: Call) -> Iterator[str]:
        """A streamed answer's lines, read as iteration goes."""
        with self._http.stream(call.method, call.path, params=call.params, headers=call.headers) as response:
            if not response.is_success:
                response.read()
                protocol.checked(response)
            yield from response.iter_lines()

    def submit_batch(
        self,
        requests: Sequence[Mapping[str, Any]] | None = None,
        *,
        upload_id: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """Queue a batch (POST /batches/): job requests `{kind, input}` (`depends_on`: other requests by index, or
        job ids), or the id of a complete upload."""
        return self._drive(protocol.submit_batch(requests, upload_id, callback_url, idempotency_key))

    def batch(self, batch_id: str) -> Batch:
        """One batch with its request counts."""
        return self._drive(protocol.get_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel the batch's jobs that have not started (refunded); `Conflict` when it is over."""
        return self._drive(protocol.cancel_batch(batch_id))

    def batches(self) -> Iterator[Batch]:
        """The caller's batches, newest first, page after page."""
        return self._every(protocol.batches_call(), BatchPage)

    def batch_jobs(self, batch_id: str, *, page_size: int | None = None) -> Iterator[BatchJob]:
        """The batch's jobs in request order, page after page."""
        return self._every(protocol.batch_jobs_call(batch_id, page_size), BatchJobPage)

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The batch's results, `{id, index, status, result, error}` per job in request order, streamed."""
        return (json.loads(line) for line in self._lines(protocol.batch_results_call(batch_id)) if line)

    def upload(self, data: bytes, *, chunk_size: int = protocol.UPLOAD_CHUNK) -> Upload:
        """Upload a file in chunks: JSONL (one job request a line) for `submit_batch(upload_id=...)`, or the text
        of a job's input for `submit("hash", {"upload_id": ...})`."""
        return self._drive(protocol.upload(data, chunk_size))

    def resume_upload(self, upload_id: str, data: bytes, *, chunk_size: int = protocol.UPLOAD_CHUNK) -> Upload:
        """Carry on an upload after a broken connection, from the offset the service holds."""
        return self._drive(protocol.resume_upload(upload_id, data, chunk_size))

    def balance(self) -> Balance:
        """The caller's credit balance."""
        return self._drive(protocol.balance())

    def limits(self) -> Limits:
        """Each endpoint's rate limit and concurrency caps as they apply to the caller, and the balance."""
        return self._drive(protocol.limits())

    def me(self) -> Me:
        """The caller: username, roles, the key's scopes, MFA enrolment, balance."""
        return self._drive(protocol.me())

    def rotate_webhook_secret(self) -> str:
        """Create or rotate the webhook signing secret (`whsec_...`, shown once); the old one signs for 24 h."""
        secret: WebhookSecret = self._drive(protocol.rotate_webhook_secret())
        return secret.secret

    def test_webhook(self, url: str) -> WebhookTestResult:
        """Have the service send a signed `webhook.test` event to `url` and say what became of it."""
        return self._drive(protocol.test_webhook(url))

    def deliveries(self, **filters: Unpack[DeliveryFilters]) -> Iterator[WebhookDelivery]:
        """The caller's webhook deliveries with their attempts, newest first, page after page."""
        return self._every(protocol.deliveries_call(filters), WebhookDeliveryPage)

    def redeliver(self, job_id: str) -> Job:
        """Deliver a finished job's webhook again (same `webhook-id`, fresh retries); `Conflict` if not possible."""
        return self._drive(protocol.redeliver(job_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited (`jobs()` and `export()` are async iterators)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    async def _drive(self, flow: Flow[T]) -> T:
        step = next(flow)
        while True:
            try:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(await self._http.send(_request(self._http, step)))
            except StopIteration as done:
                return cast(T, done.value)  # a flow returns its declared result

    async def run(self, kind: str, input: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """See `Client.run`."""
        return await self._drive(protocol.run(kind, input, idempotency_key))

    async def submit(
        self,
        kind: str,
        input: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """See `Client.submit`."""
        return await self._drive(protocol.submit(kind, input, idempotency_key, options))

    async def get(self, job_id: str) -> Job:
        """See `Client.get`."""
        return await self._drive(protocol.get(job_id))

    async def cancel(self, job_id: str) -> Job:
        """See `Client.cancel`."""
        return await self._drive(protocol.cancel(job_id))

    async def wait(self, job_id: str, timeout: float = 60.0, *, poll_interval: float = protocol.POLL_INTERVAL) -> Job:
        """See `Client.wait`."""
        return await self._drive(protocol.wait(job_id, timeout, poll_interval))

    async def events(self, job_id: str) -> AsyncIterator[StreamEvent]:
        """See `Client.events`."""
        parser = protocol.EventStreamParser()
        while True:
            call = protocol.events_call(job_id, parser.last_event_id)
            async with self._http.stream(call.method, call.path, headers=call.headers) as response:
                if not response.is_success:
                    await response.aread()
                    protocol.checked(response)
                if response.status_code == protocol.NO_CONTENT:
                    return
                async for line in response.aiter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
                        if event.event == protocol.FINAL_STREAM_EVENT:
                            return
            await asyncio.sleep((parser.retry_ms or 0) / 1000)

    async def page(self, **filters: Unpack[JobFilters]) -> JobPage:
        """See `Client.page`."""
        return await self._drive(protocol.page(protocol.page_call(filters), JobPage))

    def jobs(self, **filters: Unpack[JobFilters]) -> AsyncIterator[Job]:
        """See `Client.jobs`."""
        return self._every(protocol.page_call(filters), JobPage)

    async def _every(self, call: Call | None, cls: type[Paged[T]]) -> AsyncIterator[T]:
        """See `Client._every`."""
        while call is not None:
            current = await self._drive(protocol.page(call, cls))
            for item in current.results:
                yield item
            call = protocol.next_page_call(call, current.next)

    def export(
        self,
        format: str = "jsonl",
        *,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> AsyncIterator[str]:
        """See `Client.export`."""
        return self._lines(protocol.export_call(format, created_after, created_before))

    async def _lines(self, call: Call) -> AsyncIterator[str]:
        """See `Client._lines`."""
        async with self._http.stream(call.method, call.path, params=call.params, headers=call.headers) as response:
            if not response.is_success:
                await response.aread()
                protocol.checked(response)
            async for line in response.aiter_lines():
                yield line

    async def submit_batch(
        self,
        requests: Sequence[Mapping[str, Any]] | None = None,
        *,
        upload_id: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """See `Client.submit_batch`."""
        return await self._drive(protocol.submit_batch(requests, upload_id, callback_url, idempotency_key))

    async def batch(self, batch_id: str) -> Batch:
        """See `Client.batch`."""
        return await self._drive(protocol.get_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """See `Client.cancel_batch`."""
        return await self._drive(protocol.cancel_batch(batch_id))

    def batches(self) -> AsyncIterator[Batch]:
        """See `Client.batches`."""
        return self._every(protocol.batches_call(), BatchPage)

    def batch_jobs(self, batch_id: str, *, page_size: int | None = None) -> AsyncIterator[BatchJob]:
        """See `Client.batch_jobs`."""
        return self._every(protocol.batch_jobs_call(batch_id, page_size), BatchJobPage)

    async def batch_results(self, batch_id: str) -> AsyncIterator[dict[str, Any]]:
        """See `Client.batch_results`."""
        async for line in self._lines(protocol.batch_results_call(batch_id)):
            if line:
                yield json.loads(line)

    async def upload(self, data: bytes, *, chunk_size: int = protocol.UPLOAD_CHUNK) -> Upload:
        """See `Client.upload`."""
        return await self._drive(protocol.upload(data, chunk_size))

    async def resume_upload(self, upload_id: str, data: bytes, *, chunk_size: int = protocol.UPLOAD_CHUNK) -> Upload:
        """See `Client.resume_upload`."""
        return await self._drive(protocol.resume_upload(upload_id, data, chunk_size))

    async def balance(self) -> Balance:
        """See `Client.balance`."""
        return await self._drive(protocol.balance())

    async def limits(self) -> Limits:
        """See `Client.limits`."""
        return await self._drive(protocol.limits())

    async def me(self) -> Me:
        """See `Client.me`."""
        return await self._drive(protocol.me())

    async def rotate_webhook_secret(self) -> str:
        """See `Client.rotate_webhook_secret`."""
        secret: WebhookSecret = await self._drive(protocol.rotate_webhook_secret())
        return secret.secret

    async def test_webhook(self, url: str) -> WebhookTestResult:
        """See `Client.test_webhook`."""
        return await self._drive(protocol.test_webhook(url))

    def deliveries(self, **filters: Unpack[DeliveryFilters]) -> AsyncIterator[WebhookDelivery]:
        """See `Client.deliveries`."""
        return self._every(protocol.deliveries_call(filters), WebhookDeliveryPage)

    async def redeliver(self, job_id: str) -> Job:
        """See `Client.redeliver`."""
        return await self._drive(protocol.redeliver(job_id))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
