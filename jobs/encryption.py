"""Encryption at rest of a kind's sensitive input fields (and of its result, listed as `result`).

A sealed value is stored as {"$fernet": token}, the token holding the JSON of the plain value; the API
shows sensitive input fields as MASK and the worker opens them to run.
"""

import json
from collections.abc import Callable
from typing import Any

from django.db import transaction

from jobs.models import Job, KindSettings, UploadChunk, WebhookSecret
from jobsite.crypto import decrypt, encrypt, get_fernet, rotate

SEALED = "$fernet"
MASK = "***"
RESULT_FIELD = "result"
"""The pseudo-field name in KindSettings.encrypt_fields that means: encrypt the result too."""

ROTATE_BATCH = 500
"""Jobs re-encrypted per transaction by rotate_keys."""


def _seal(value: Any) -> dict[str, str]:
    return {SEALED: encrypt(json.dumps(value))}


def _is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and SEALED in value


def _open(value: Any) -> Any:
    return json.loads(decrypt(value[SEALED])) if _is_sealed(value) else value


def seal_input(kind_settings: KindSettings, params: dict[str, Any]) -> dict[str, Any]:
    fields = set(kind_settings.encrypt_field_list) - {RESULT_FIELD}
    return {name: _seal(value) if name in fields else value for name, value in params.items()}


def open_input(stored: dict[str, Any]) -> dict[str, Any]:
    return {name: _open(value) for name, value in stored.items()}


def input_masker(kind_settings: KindSettings) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """masked_input for many jobs of one kind (the export): the kind's field list is read once, not per job."""
    fields = frozenset(kind_settings.encrypt_field_list)

    def mask(stored: dict[str, Any]) -> dict[str, Any]:
        return {name: MASK if name in fields or _is_sealed(value) else value for name, value in stored.items()}

    return mask


def could_be_sealed(json_text: str) -> bool:
    """Whether a stored value's JSON text may hold a sealed value (without the marker it holds none: the export then
    neither opens nor checks it)."""
    return SEALED in json_text


def masked_input(kind_settings: KindSettings, stored: dict[str, Any]) -> dict[str, Any]:
    return input_masker(kind_settings)(stored)


def seal_result(kind_settings: KindSettings, result: Any) -> Any:
    """Seal the result when the kind's settings say so; a result already sealed (from the cache) stays as is."""
    if RESULT_FIELD not in kind_settings.encrypt_field_list or result is None or _is_sealed(result):
        return result
    return _seal(result)


def open_result(stored: Any) -> Any:
    return _open(stored)


def _rotated(value: Any) -> Any:
    return {SEALED: rotate(value[SEALED])} if _is_sealed(value) else value


def jobs_rotate_keys() -> int:
    """Re-encrypt every sealed value under the newest key; returns how many jobs were rewritten."""
    rewritten = 0
    last_pk = None
    while True:
        # Row locks: a worker finishing a job cannot write its result between our read and our write.
        with transaction.atomic():
            jobs = Job.objects.select_for_update().order_by("pk").only("pk", "input", "result")
            if last_pk is not None:
                jobs = jobs.filter(pk__gt=last_pk)
            batch = list(jobs[:ROTATE_BATCH])
            if not batch:
                return rewritten
            last_pk = batch[-1].pk
            changed = []
            for job in batch:
                new_input = {name: _rotated(value) for name, value in job.input.items()}
                new_result = _rotated(job.result)
                if new_input != job.input or new_result != job.result:
                    job.input, job.result = new_input, new_result
                    changed.append(job)
            Job.objects.bulk_update(changed, ["input", "result"])
        rewritten += len(changed)


@transaction.atomic
def webhook_secrets_rotate_keys() -> int:
    """Re-encrypt every stored webhook signing secret under the newest key; returns how many."""
    secrets = list(WebhookSecret.objects.select_for_update().only("pk", "secret_encrypted"))
    for secret in secrets:
        secret.secret_encrypted = rotate(secret.secret_encrypted)
    WebhookSecret.objects.bulk_update(secrets, ["secret_encrypted"])
    return len(secrets)


@transaction.atomic
def upload_chunks_rotate_keys() -> int:
    """Re-encrypt every stored chunk of the uploads in progress under the newest key; returns how many."""
    chunks = list(UploadChunk.objects.select_for_update().only("pk", "data"))
    fernet = get_fernet()
    for chunk in chunks:
        chunk.data = fernet.rotate(bytes(chunk.data))
    UploadChunk.objects.bulk_update(chunks, ["data"])
    return len(chunks)
