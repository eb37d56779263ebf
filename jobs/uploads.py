"""Uploads, in chunks that resume after a broken connection (tus-style offsets): JSONL files for batches, and
the text input of a job (a kind's upload_field, named by `upload_id`).

A PATCH appends its bytes at `Upload-Offset` with one conditional UPDATE (the offset must be where the upload
stands), so a retried or duplicated chunk is refused with the current offset (409) instead of written twice,
and `HEAD` tells a client whose connection broke where to resume. Chunks are encrypted at rest whatever the
kind: which kinds (and so which fields) a file holds is only known once it is parsed, so every chunk is sealed
(Fernet, jobsite.crypto) and the jobs made of it seal their inputs as their kinds say.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from rest_framework import serializers

from accounts.models import EndpointPolicy, User
from jobs.kinds.base import Kind
from jobs.models import Upload, UploadChunk
from jobsite.crypto import get_fernet
from jobsite.errors import InvalidInput, NotFound, PayloadTooLarge, UploadIncomplete, UploadOffsetMismatch


def upload_get(*, user: User, upload_id: UUID) -> Upload | None:
    """The user's upload while it lives; anyone else's, or an expired one, is not there."""
    return Upload.objects.filter(pk=upload_id, owner=user, expires_at__gt=timezone.now()).first()


def _upload_require(*, user: User, upload_id: UUID) -> Upload:
    upload = upload_get(user=user, upload_id=upload_id)
    if upload is None:
        raise NotFound("No such upload.")
    return upload


def upload_create(*, user: User, policy: EndpointPolicy, length: int) -> Upload:
    """Announce a file of `length` bytes (Upload-Length), within the policy's upload_max_bytes (else 413)."""
    if length < 1:
        raise InvalidInput([{"field": "Upload-Length", "message": "An upload holds at least one byte."}])
    if length > policy.upload_max_bytes:
        raise PayloadTooLarge(
            f"Uploads hold at most {policy.upload_max_bytes} bytes (policy upload_max_bytes); {length} announced.",
            limit=policy.upload_max_bytes,
        )
    now = timezone.now()
    return Upload.objects.create(
        owner=user, length=length, created_at=now, expires_at=now + timedelta(seconds=settings.UPLOAD_RETENTION)
    )


@transaction.atomic
def upload_append(*, user: User, upload_id: UUID, offset: int, data: bytes) -> Upload:
    """Append a chunk at `offset`: only where the upload stands (409 with the current offset), never past its
    length (413). The chunk and the new offset commit together."""
    moved = Upload.objects.filter(
        pk=upload_id, owner=user, expires_at__gt=timezone.now(), offset=offset, length__gte=offset + len(data)
    ).update(offset=F("offset") + len(data))
    upload = _upload_require(user=user, upload_id=upload_id)
    if not moved:
        if upload.offset != offset:
            raise UploadOffsetMismatch(offset=upload.offset, sent=offset)
        raise PayloadTooLarge(
            f"The chunk runs {offset + len(data) - upload.length} bytes past Upload-Length ({upload.length}).",
            limit=upload.length - offset,
        )
    if data:
        UploadChunk.objects.create(upload=upload, offset=offset, data=get_fernet().encrypt(data))
    return upload


def _upload_complete(*, user: User, upload_id: UUID) -> Upload:
    upload = _upload_require(user=user, upload_id=upload_id)
    if not upload.complete:
        raise UploadIncomplete(f"The upload holds {upload.offset} of its {upload.length} bytes; send the rest first.")
    return upload


def upload_lines(*, user: User, upload_id: UUID) -> Iterator[tuple[int, bytes]]:
    """A complete upload's lines (numbered from 1), read one chunk at a time (409 while bytes are missing)."""
    return _lines(_upload_complete(user=user, upload_id=upload_id))


def _chunks(upload: Upload) -> Iterator[bytes]:
    position = 0
    while position < upload.length:
        chunk = UploadChunk.objects.filter(upload=upload, offset=position).values_list("data", flat=True).first()
        if chunk is None:
            raise NotFound("The upload lost a chunk; upload the file again.")
        data = get_fernet().decrypt(bytes(chunk))
        position += len(data)
        yield data


def _lines(upload: Upload) -> Iterator[tuple[int, bytes]]:
    number, pending = 0, b""
    for data in _chunks(upload):
        *complete, pending = (pending + data).split(b"\n")
        for line in complete:
            number += 1
            yield number, line
    if pending:
        yield number + 1, pending


UPLOAD_ID_FIELD = "upload_id"
"""The input field naming an upload in place of a kind's upload_field."""

UTF8_MAX_BYTES_PER_CHAR = 4
"""An upload of more than this many bytes per character the field allows cannot fit: refused before reading it."""


def upload_input_take(*, user: User, kind: Kind, params: dict[str, Any]) -> tuple[dict[str, Any], UUID | None]:
    """A job input with the upload its `upload_id` names read into the kind's upload_field, validated by the
    kind's own serializer as inline data is, and that upload's id (None: the input named none).

    The bytes are UTF-8 text (400 otherwise), the value inline data would be; the caller's complete upload only
    (404, 409 upload_incomplete), within the field's limit (413). The upload is not consumed here: the caller
    deletes it once the job is accepted (upload_discard, upload_consume).
    """
    if kind.upload_field is None or UPLOAD_ID_FIELD not in params:
        return params, None
    upload_id: UUID = params[UPLOAD_ID_FIELD]
    upload = _upload_complete(user=user, upload_id=upload_id)
    field = kind.serializer_class().fields[kind.upload_field]
    max_chars: int = field.max_length  # type: ignore[attr-defined]  # a CharField: the kind's limit
    if upload.length > max_chars * UTF8_MAX_BYTES_PER_CHAR:
        raise _too_large(kind, upload.length, "bytes", max_chars)
    raw = b"".join(_chunks(upload))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"The upload is not UTF-8 text (byte {exc.start} is not); {kind.name} reads text."
        raise serializers.ValidationError({"input": {UPLOAD_ID_FIELD: [message]}}) from None
    if len(text) > max_chars:
        raise _too_large(kind, len(text), "characters", max_chars)
    inline = {name: value for name, value in params.items() if name != UPLOAD_ID_FIELD}
    serializer = kind.serializer_class(data={**inline, kind.upload_field: text})
    if not serializer.is_valid():
        errors = dict(serializer.errors)
        if kind.upload_field in errors:  # the upload's text is at fault: say so where the caller named it
            errors[UPLOAD_ID_FIELD] = errors.pop(kind.upload_field)
        raise serializers.ValidationError({"input": errors})
    return dict(serializer.validated_data), upload_id


def _too_large(kind: Kind, size: int, unit: str, max_chars: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload holds {size} {unit}; {kind.name}'s {kind.upload_field} holds at most {max_chars} characters.",
        limit=max_chars,
    )


def upload_discard(*, user: User, upload_id: UUID) -> None:
    """Delete an upload a job was made of, once the job is accepted; gone already (a concurrent job took it) is
    fine: each job holds its own copy of the bytes."""
    Upload.objects.filter(pk=upload_id, owner=user).delete()


def upload_consume(*, user: User, upload_id: UUID) -> None:
    """Delete an upload a batch was made of, in the batch's transaction; gone already (another batch or job took
    it): 404."""
    deleted, _ = Upload.objects.filter(pk=upload_id, owner=user).delete()
    if not deleted:
        raise NotFound("No such upload: another batch or job was made of it.")


def uploads_purge_expired() -> int:
    """Delete uploads past their retention that no batch was made of; returns how many went."""
    _, per_model = Upload.objects.filter(expires_at__lte=timezone.now()).delete()
    return per_model.get(Upload._meta.label, 0)
