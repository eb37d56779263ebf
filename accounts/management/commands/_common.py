"""Shared by the account commands: look-ups that fail as CommandErrors, ServiceErrors as CommandErrors."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError

from accounts.models import ApiKey, User
from jobsite.errors import InvalidInput, ServiceError


def get_user(username: str) -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user {username!r}")
    return user


def get_api_key(prefix: str) -> ApiKey:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None:
        raise CommandError(f"no API key with prefix {prefix!r}")
    return key


@contextmanager
def service_errors() -> Iterator[None]:
    try:
        yield
    except InvalidInput as exc:
        raise CommandError("; ".join(error["message"] for error in exc.extra["errors"])) from None
    except ServiceError as exc:
        raise CommandError(exc.detail) from None
