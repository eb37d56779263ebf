"""Validation of endpoint policies, shared by the admin and `manage.py policy`."""

from typing import Any

from django import forms
from django.db import models

from accounts.models import SCOPES, EndpointPolicy, RateLimitAlgorithm, Role, split_list
from accounts.policies import ENDPOINT_DEFAULTS


def clean_comma_list(value: str, allowed: set[str], what: str) -> str:
    items = list(dict.fromkeys(split_list(value)))
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise forms.ValidationError(
            f"Unknown {what}: {', '.join(unknown)}. Known: {', '.join(sorted(allowed)) or 'none'}."
        )
    return ",".join(items)


def editable_fields(model: type[models.Model]) -> list[str]:
    """Every field staff may edit: a field added to the model appears in the admin and the command at once."""
    return [field.name for field in model._meta.fields if field.editable and not field.primary_key]


class EndpointPolicyForm(forms.ModelForm):
    class Meta:
        model = EndpointPolicy
        fields = editable_fields(EndpointPolicy)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if name not in ENDPOINT_DEFAULTS:
            raise forms.ValidationError(f"Unknown endpoint {name!r}. Known: {', '.join(ENDPOINT_DEFAULTS)}.")
        return name

    def clean_roles(self) -> str:
        return clean_comma_list(self.cleaned_data["roles"], set(Role.objects.values_list("name", flat=True)), "role(s)")

    def clean_scopes(self) -> str:
        return clean_comma_list(self.cleaned_data["scopes"], set(SCOPES), "scope(s)")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        algorithm = data.get("rate_limit_algorithm")
        if algorithm and algorithm != RateLimitAlgorithm.NONE:
            for field in ("rate_limit", "rate_window"):
                if data.get(field) == 0:
                    self.add_error(field, f"Must be at least 1 when the rate limit algorithm is {algorithm}.")
            if algorithm == RateLimitAlgorithm.TOKEN_BUCKET and data.get("refill_rate") == 0:
                self.add_error("refill_rate", "Must be at least 1 for a token bucket.")
        for field in ("queue_max_depth", "idempotency_ttl", "batch_max_jobs", "upload_max_bytes"):
            if data.get(field) == 0:
                self.add_error(field, "Must be at least 1.")
        if data.get("auth_required") is False and data.get("mfa_required"):
            self.add_error("mfa_required", "MFA needs authentication: turn auth_required on as well.")
        return data
