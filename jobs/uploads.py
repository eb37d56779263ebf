"""Uploads of JSONL files for batches, in chunks that resume after a broken connection (tus-style offsets).

A PATCH appends its bytes at `Upload-Offset` with one conditional UPDATE (the offset must be where the upload
stands), so a retried or duplicated chunk is refused with the current offset (409) instead of written twice,
and `HEAD` tells a client whose connection broke where to resume. Chunks are encrypted at rest whatever the
kind: which kinds (and so which fields) a file holds is only known once it is parsed, so every chunk is sealed
(Fernet, jobsite.crypto) and the jobs made of it seal their inputs as their kinds say.
"""

from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import EndpointPolicy, User
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


def upload_lines(*, user: User, upload_id: UUID) -> Iterator[tuple[int, bytes]]:
    """A complete upload's lines (numbered from 1), read one chunk at a time (409 while bytes are missing)."""
    upload = _upload_require(user=user, upload_id=upload_id)
    if not upload.complete:
        raise UploadIncomplete(f"The upload holds {upload.offset} of its {upload.length} bytes; send the rest first.")
    return _lines(upload)


def _lines(upload: Upload) -> Iterator[tuple[int, bytes]]:
    number, pending, position = 0, b"", 0
    while position < upload.length:
        chunk = UploadChunk.objects.filter(upload=upload, offset=position).values_list("data", flat=True).first()
        if chunk is None:
            raise NotFound("The upload lost a chunk; upload the file again.")
        data = get_fernet().decrypt(bytes(chunk))
        position += len(data)
        *complete, pending = (pending + data).split(b"\n")
        for line in complete:
            number += 1
            yield number, line
    if pending:
        yield number + 1, pending


def upload_consume(*, user: User, upload_id: UUID) -> None:
    """Delete the upload a batch was made of, in the batch's transaction; gone already (another batch took it): 404."""
    deleted, _ = Upload.objects.filter(pk=upload_id, owner=user).delete()
    if not deleted:
        raise NotFound("No such upload: another batch was made of it.")


def uploads_purge_expired() -> int:
    """Delete uploads past their retention that no batch was made of; returns how many went."""
    _, per_model = Upload.objects.filter(expires_at__lte=timezone.now()).delete()
    return per_model.get(Upload._meta.label, 0)
