"""Serializer fields whose validation and OpenAPI schema say the same thing.

DRF's CharField and IntegerField coerce (`0` becomes "0", `"12"` and `true` become integers), so a body the
schema calls invalid would be accepted; these refuse what the schema refuses. Query strings are text, so
their fields keep DRF's parsing.
"""

import re
from typing import Any, cast

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from rest_framework import serializers

NO_NUL_PATTERN = r"^[^\x00]*$"
"""Text without NUL characters (DRF refuses them; the schema says so)."""

_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_URI_CHAR = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
HTTP_URL_PATTERN = rf"^https?://[A-Za-z0-9\-._~]+(?::{_PORT})?(?:[/?#]{_URI_CHAR}*)?$"
"""An http(s) URL in RFC 3986's ASCII characters: a host name or IPv4 address (no credentials, no IPv6 literal),
a port 1..65535, then path, query and fragment. Serializers validate with it and the schema publishes it."""


class FullMatchValidator(RegexValidator):
    """A RegexValidator (so drf-spectacular publishes its pattern) that, like JSON Schema, lets no newline trail."""

    def __call__(self, value: Any) -> None:
        regex = cast(re.Pattern[str], self.regex)  # RegexValidator.__init__ compiled it
        if not regex.fullmatch(str(value)):
            raise ValidationError(self.message, code=self.code, params={"value": value})


def matches_http_url(value: str) -> bool:
    return re.fullmatch(HTTP_URL_PATTERN, value) is not None


class StrictCharField(serializers.CharField):
    """A JSON string, nothing else; NUL characters refused (and documented as a pattern)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if not any(isinstance(validator, RegexValidator) for validator in self.validators):
            self.validators.append(RegexValidator(NO_NUL_PATTERN, message="Null characters are not allowed."))

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer, nothing else: no strings, no booleans, no fractions."""

    def to_internal_value(self, data: Any) -> int:
        if (
            isinstance(data, bool)
            or not isinstance(data, int | float)
            or (isinstance(data, float) and not data.is_integer())
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean, nothing else: no "yes", "1" or 0."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class ListedChoiceField(serializers.ChoiceField):
    """A choice whose error lists the valid choices, so the caller learns them from the refusal."""

    def __init__(self, choices: Any, **kwargs: Any):
        super().__init__(choices, **kwargs)
        valid = ", ".join(str(key) for key in self.choices)
        self.error_messages["invalid_choice"] = f'"{{input}}" is not a valid choice; valid choices: {valid}.'
