"""A job's input from an upload through the real service: gunicorn, an RQ worker, the Python client."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import User
from tests.client_helpers import jc
from tests.job_helpers import hash_output, set_balance

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_an_async_job_from_a_chunked_upload_runs_on_a_worker_as_inline_data_does(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    user = make_user()
    set_balance(user, 10)
    client = client_of(user)
    text = f"{uuid.uuid4().hex}\nline two, ünïcode\n" * 40
    uploaded = client.upload(text.encode(), chunk_size=100)
    assert uploaded.offset == uploaded.length == len(text.encode())
    queued = client.submit("hash", {"upload_id": uploaded.id, "iterations": 20})
    inline = client.submit("hash", {"data": text, "iterations": 21})
    assert queued.status == "queued" and queued.input == {"data": text, "iterations": 20}
    start_worker("jobs")
    done, inline_done = client.wait(queued.id, timeout=60), client.wait(inline.id, timeout=60)
    assert done.status == inline_done.status == "succeeded"
    assert done.result["output_hash"] == hash_output(text, 20)
    assert done.result["input_hash"] == inline_done.result["input_hash"]
    assert client.balance().balance == 8
