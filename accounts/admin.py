from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts.forms import EndpointPolicyForm
from accounts.models import SCOPES, ApiKey, EndpointPolicy, IpAllowEntry, Role, User
from accounts.services import api_key_create, api_key_revoke
from jobsite.admin import PolicyAdmin

CREATED_KEY_ATTRIBUTE = "_jobsite_created_api_key"
"""Where save_model leaves the plain key for response_add, on this request only."""


@admin.register(User)
class JobsiteUserAdmin(UserAdmin):
    fieldsets = (*(UserAdmin.fieldsets or ()), ("Access", {"fields": ("roles",)}))
    filter_horizontal = (*UserAdmin.filter_horizontal, "roles")
    list_filter = (*UserAdmin.list_filter, "roles")


@admin.register(Role)
class RoleAdmin(admin.ModelAdmin):
    list_display = ["name", "description"]
    search_fields = ["name"]


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in SCOPES], widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = ApiKey
        fields = ["owner", "name", "scopes", "expires_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["scopes"] = self.instance.scope_list

    def clean_scopes(self) -> str:
        return ",".join(self.cleaned_data["scopes"])


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Creating a key shows it once on the next page; afterwards only its prefix is known."""

    form = ApiKeyForm
    list_display = ["prefix", "owner", "name", "scopes", "created_at", "expires_at", "revoked_at", "last_used"]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["prefix", "name", "owner__username"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        return ["owner", "prefix", "created_at", "last_used", "revoked_at"]

    @admin.display(description="last used (to within API_KEY_TOUCH_INTERVAL)", ordering="last_used_at")
    def last_used(self, obj: ApiKey) -> datetime | None:
        """Written at most once per API_KEY_TOUCH_INTERVAL per process (accounts.services.api_key_touch)."""
        return obj.last_used_at

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw_key = api_key_create(owner=obj.owner, name=obj.name, scopes=obj.scope_list, expires_at=obj.expires_at)
        obj.pk = key.pk
        obj.refresh_from_db()
        setattr(request, CREATED_KEY_ATTRIBUTE, raw_key)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "key": obj,
            "raw_key": getattr(request, CREATED_KEY_ATTRIBUTE),
        }
        response = TemplateResponse(request, "admin/accounts/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = [api_key_revoke(prefix=key.prefix) for key in queryset.filter(revoked_at__isnull=True)]
        self.message_user(request, f"Revoked {len(revoked)} API key(s).", messages.SUCCESS)


@admin.register(IpAllowEntry)
class IpAllowEntryAdmin(admin.ModelAdmin):
    list_display = ["cidr", "user", "api_key", "note", "created_at"]
    search_fields = ["cidr", "user__username", "api_key__prefix", "note"]
    autocomplete_fields = ["user", "api_key"]


@admin.register(EndpointPolicy)
class EndpointPolicyAdmin(PolicyAdmin):
    form = EndpointPolicyForm
    identity = "name"
    list_display = [
        "name",
        "enabled",
        "auth_required",
        "roles",
        "scopes",
        "ip_allowlist",
        "mfa_required",
        "rate_limit_algorithm",
        "rate_limit",
        "rate_window",
        "updated_at",
    ]
    list_filter = ["enabled", "auth_required", "ip_allowlist", "mfa_required", "rate_limit_algorithm"]
