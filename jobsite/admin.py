"""Admin pieces: for tables of millions of rows (estimated counts, searches an index serves), and for settings rows."""

import json
import string
from functools import cached_property
from typing import Any, cast
from uuid import UUID

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest

EXACT_COUNT_UP_TO = 10_000
"""Below this many rows the admin counts exactly (a bounded COUNT over at most this many)."""

ID_PREFIX_MIN = 4
"""Hex digits from which a search term is taken as an id prefix rather than a username prefix."""


def planner_estimate(queryset: QuerySet[Model]) -> int | None:
    """PostgreSQL's own row estimate for the query (from pg_class.reltuples and column statistics); None elsewhere."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    return int((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to EXACT_COUNT_UP_TO rows and estimates beyond: a COUNT(*) of millions costs seconds."""

    @cached_property
    def count(self) -> int:
        objects = cast(QuerySet[Model], self.object_list)  # the admin pages querysets only
        estimate = planner_estimate(objects)
        if estimate is not None and estimate > EXACT_COUNT_UP_TO:
            return estimate
        return objects[: EXACT_COUNT_UP_TO + 1].count()


class ScaleAdmin(admin.ModelAdmin):
    """A list that costs the same at ten million rows: estimated count, no full count, indexed search.

    Search: a term of hex digits and dashes (at least ID_PREFIX_MIN digits) is a prefix of `id_search_field`
    (a UUID: a range on its index); anything else a prefix of `username_search_field` (the unique username's
    pattern index). No `icontains`: that scans the table.
    """

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    id_search_field: str
    username_search_field: str

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        digits = term.replace("-", "").lower()
        if ID_PREFIX_MIN <= len(digits) <= 32 and all(c in string.hexdigits for c in digits):
            lowest, highest = UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))
            match = Q(**{f"{self.id_search_field}__gte": lowest, f"{self.id_search_field}__lte": highest})
        else:
            match = Q(**{f"{self.username_search_field}__startswith": term})
        return queryset.filter(match), False


class PolicyAdmin(admin.ModelAdmin):
    """Validated by the same forms as `manage.py policy`; the name of a row is fixed once created."""

    identity: str

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return [self.identity, "updated_at"] if obj else ["updated_at"]
