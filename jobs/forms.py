"""Validation of kind settings, shared by the admin and `manage.py policy`."""

from typing import Any

from django import forms
from django.conf import settings

from accounts.forms import clean_comma_list, editable_fields
from jobs.encryption import RESULT_FIELD
from jobs.kinds import KINDS
from jobs.models import CacheAlgorithm, KindSettings
from jobsite.sizing import DEFAULT_POOL


class KindSettingsForm(forms.ModelForm):
    class Meta:
        model = KindSettings
        fields = editable_fields(KindSettings)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "pool" in self.fields:  # a choice of this deployment's pools (RQ_POOLS), not free text
            model_field = KindSettings._meta.get_field("pool")
            pools = [(name, f"{name} ({size} workers)") for name, size in settings.JOB_POOLS.items()]
            self.fields["pool"] = forms.ChoiceField(
                choices=pools, label=model_field.verbose_name, help_text=model_field.help_text, initial=DEFAULT_POOL
            )

    def clean_kind(self) -> str:
        kind = self.cleaned_data["kind"]
        if kind not in KINDS:
            raise forms.ValidationError(f"Unknown kind {kind!r}. Known: {', '.join(KINDS)}.")
        return kind

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        kind = KINDS.get(data.get("kind", ""))
        if kind is not None and "encrypt_fields" in data:
            try:
                data["encrypt_fields"] = clean_comma_list(
                    data["encrypt_fields"],
                    {*kind.serializer_class().fields, RESULT_FIELD},
                    f"input field(s) of {kind.name} (or {RESULT_FIELD})",
                )
            except forms.ValidationError as exc:
                self.add_error("encrypt_fields", exc)
        algorithm = data.get("cache_algorithm")
        if kind is not None and algorithm and algorithm != CacheAlgorithm.NONE:
            if not kind.cacheable:
                self.add_error("cache_algorithm", f"Results of {kind.name} are not cacheable.")
            if data.get("cache_capacity") == 0:
                self.add_error("cache_capacity", "Must be at least 1 when caching is on.")
        if data.get("time_limit") == 0:
            self.add_error("time_limit", "Must be at least 1.")
        for field in ("retry_backoff", "callback_backoff"):
            if data.get(field) is not None and data[field] < 0:
                self.add_error(field, "Must not be negative.")
        return data
