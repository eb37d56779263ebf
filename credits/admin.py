"""Credit accounts with grant/adjust actions that post ledger entries; the ledger itself is read-only."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from credits.models import CreditAccount, LedgerEntry
from credits.services import credit_adjust, credit_grant
from jobsite.errors import ServiceError


class PostingForm(forms.Form):
    amount = forms.IntegerField(help_text="Grant: positive. Adjustment: signed (+ adds, - removes).")
    reason = forms.CharField(max_length=255)


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    ordering = ["-created_at", "-id"]
    fields = readonly_fields = ["created_at", "type", "amount", "balance_after", "reason", "job_id", "created_by"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CreditAccount)
class CreditAccountAdmin(admin.ModelAdmin):
    """Balances change only through the actions (each posts a ledger entry with the staff user)."""

    list_display = ["user", "balance", "updated_at"]
    search_fields = ["user__username"]
    readonly_fields = ["user", "balance", "updated_at"]
    inlines = [LedgerEntryInline]
    actions = ["grant", "adjust"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _posting_action(
        self, request: HttpRequest, queryset: QuerySet[CreditAccount], *, action: str, post: Any
    ) -> HttpResponse | None:
        form = PostingForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            done = 0
            for account in queryset.select_related("user"):
                try:
                    post(user=account.user, created_by=request.user, **form.cleaned_data)
                    done += 1
                except ServiceError as exc:
                    self.message_user(request, f"{account.user}: {exc.detail}", messages.ERROR)
            self.message_user(request, f"Posted {action} to {done} account(s).", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action.capitalize()} credits",
            "form": form,
            "accounts": queryset,
            "action": action,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/credits/posting_form.html", context)

    @admin.action(description="Grant credits to selected accounts")
    def grant(self, request: HttpRequest, queryset: QuerySet[CreditAccount]) -> HttpResponse | None:
        return self._posting_action(request, queryset, action="grant", post=credit_grant)

    @admin.action(description="Adjust credits of selected accounts")
    def adjust(self, request: HttpRequest, queryset: QuerySet[CreditAccount]) -> HttpResponse | None:
        return self._posting_action(request, queryset, action="adjust", post=credit_adjust)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Append-only: nothing here can be added, changed or deleted."""

    list_display = ["created_at", "account", "type", "amount", "balance_after", "reason", "job_id", "created_by"]
    list_filter = ["type"]
    search_fields = ["account__user__username", "posting_key", "job_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
