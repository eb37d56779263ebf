"""How a job is submitted and recognised: the service's own API (`/api/v1/jobs/...`) or the original
backend's compatible routes (`/sync`, `/async`), as API.md describes them."""

import secrets
from dataclasses import dataclass, field
from typing import Any

from jobsite_client import Job, MalformedResponse, parse

SYNC = "sync"
ASYNC = "async"
MODES = (SYNC, ASYNC)


@dataclass(frozen=True)
class JobSpec:
    """What each request asks for; `unique` makes every request's `data` distinct, so the result cache never answers.

    Distinct across modes and runs too: the run id and the mode go into the data with the request index.
    """

    kind: str = "hash"
    data: str = "hello"
    iterations: int = 1000
    input: dict[str, Any] | None = None
    unique: bool = False
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))

    def hash_input(self, mode: str, index: int) -> dict[str, Any]:
        data = f"{self.data}-{self.run_id}-{mode}-{index}" if self.unique else self.data
        return {"data": data, "iterations": self.iterations}


class NativeDialect:
    """The service's API: POST /api/v1/jobs/{sync,async}/ with `{kind, input, callback_url}`."""

    callback_id_field = "id"
    compat = False

    def path(self, mode: str) -> str:
        return f"/api/v1/jobs/{mode}/"

    def body(self, spec: JobSpec, mode: str, index: int, callback_url: str | None) -> dict[str, Any]:
        job_input = spec.input if spec.input is not None else spec.hash_input(mode, index)
        body: dict[str, Any] = {"kind": spec.kind, "input": job_input}
        if mode == ASYNC and callback_url:
            body["callback_url"] = callback_url
        return body

    def accepted(self, mode: str, status_code: int, body: Any) -> str | None:
        """The job id when the answer is the success the mode promises (sync 200 succeeded, async 202)."""
        try:
            job = parse(Job, body)
        except MalformedResponse:
            return None
        if mode == SYNC and status_code == 200 and job.status == "succeeded":
            return job.id
        if mode == ASYNC and status_code == 202:
            return job.id
        return None


class CompatDialect:
    """The original backend's routes: POST /sync and /async with `{data, iterations[, callback_url]}`."""

    callback_id_field = "request_id"
    compat = True

    def path(self, mode: str) -> str:
        return f"/{mode}"

    def body(self, spec: JobSpec, mode: str, index: int, callback_url: str | None) -> dict[str, Any]:
        body = spec.hash_input(mode, index)
        if mode == ASYNC and callback_url:
            body["callback_url"] = callback_url
        return body

    def accepted(self, mode: str, status_code: int, body: Any) -> str | None:
        """The request id of a 200 `{"status": "success", "result": {...}}` or `{"status": "accepted", ...}`."""
        if status_code != 200 or not isinstance(body, dict):
            return None
        if mode == SYNC and body.get("status") == "success" and isinstance(body.get("result"), dict):
            return body["result"].get("request_id")
        if mode == ASYNC and body.get("status") == "accepted":
            return body.get("request_id")
        return None


Dialect = NativeDialect | CompatDialect


def dialect_for(*, compat: bool) -> Dialect:
    return CompatDialect() if compat else NativeDialect()
