"""Serializer fields whose validation and OpenAPI schema say the same thing.

DRF's CharField and IntegerField coerce (`0` becomes "0", `"12"` and `true` become integers), so a body the
schema calls invalid would be accepted; these refuse what the schema refuses. Query strings are text, so
their fields keep DRF's parsing.
"""

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

NO_NUL_PATTERN = r"^[^\x00]*$"
"""Text without NUL characters (DRF refuses them; the schema says so)."""


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


class ListedChoiceField(serializers.ChoiceField):
    """A choice whose error lists the valid choices, so the caller learns them from the refusal."""

    def __init__(self, choices: Any, **kwargs: Any):
        super().__init__(choices, **kwargs)
        valid = ", ".join(str(key) for key in self.choices)
        self.error_messages["invalid_choice"] = f'"{{input}}" is not a valid choice; valid choices: {valid}.'
