"""Credit accounts with grant/adjust actions that post ledger entries; the ledger itself is read-only."""

from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from credits.models import CreditAccount, LedgerEntry
from credits.services import credit_adjust, credit_grant
from jobsite.admin import ScaleAdmin
from jobsite.errors import ServiceError


class PostingForm(forms.Form):
    amount = forms.IntegerField(help_text="Grant: positive. Adjustment: signed (+ adds, - removes).")
    reason = forms.CharField(max_length=255)


RECENT_LEDGER_ENTRIES = 50
"""Ledger entries shown on an account's page; the full, paginated list is one link away."""


@admin.register(CreditAccount)
class CreditAccountAdmin(admin.ModelAdmin):
    """Balances change only through the actions (each posts a ledger entry with the staff user).

    One row per user: the list is as small as the user table; an account's ledger is what grows.
    """

    list_display = ["user", "balance", "updated_at"]
    search_fields = ["user__username"]
    list_select_related = ["user"]
    readonly_fields = ["user", "balance", "updated_at", "recent_ledger"]
    actions = ["grant", "adjust"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: CreditAccount | None = None) -> bool:
        return False

    @admin.display(description="Latest ledger entries")
    def recent_ledger(self, account: CreditAccount) -> str:
        """The newest entries on the (account, created_at) index: a heavy account has millions."""
        entries = account.entries.select_related("created_by").order_by("-created_at", "-id")[:RECENT_LEDGER_ENTRIES]
        full_list = reverse("admin:credits_ledgerentry_changelist") + f"?account__exact={account.pk}"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (e.created_at, e.type, e.amount, e.balance_after, e.reason, e.job_id or "", e.created_by or "")
                for e in entries
            ),
        )
        return format_html(
            '<p><a href="{}">The full ledger of this account</a> (paginated, newest first). The latest {}:</p>'
            "<table><thead><tr><th>created</th><th>type</th><th>amount</th><th>balance after</th><th>reason</th>"
            "<th>job</th><th>by</th></tr></thead><tbody>{}</tbody></table>",
            full_list,
            RECENT_LEDGER_ENTRIES,
            rows,
        )

    def _posting_action(
        self,
        request: HttpRequest,
        queryset: QuerySet[CreditAccount],
        *,
        action: str,
        post: Callable[..., LedgerEntry | None],
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
class LedgerEntryAdmin(ScaleAdmin):
    """Append-only: nothing here can be added, changed or deleted. No date drill-down (DISTINCT over all rows)."""

    list_display = ["created_at", "account", "type", "amount", "balance_after", "reason", "job_id", "created_by"]
    list_filter = ["type"]
    list_select_related = ["account__user", "created_by"]
    search_fields = ["account__user__username", "job_id"]
    search_help_text = "A job id or its first hex digits (at least 4), or a username or its beginning."
    id_search_field = "job_id"
    username_search_field = "account__user__username"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False
