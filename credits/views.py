"""Thin views over credits selectors, governed by the `credits.read` endpoint policy."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from credits.selectors import credit_balance, ledger_list
from credits.serializers import BalanceSerializer, LedgerEntrySerializer
from jobsite.api import GATE_STATUSES, EndpointView, NewestFirstPagination, PageQuerySerializer, paginated, problems


class BalanceView(EndpointView):
    endpoint = "credits.read"

    @extend_schema(operation_id="credits_balance", summary="The caller's credit balance",
                   responses={200: BalanceSerializer, **problems(*GATE_STATUSES)})  # fmt: skip
    def get(self, request: Request) -> Response:
        return Response(BalanceSerializer({"balance": credit_balance(user=request.user)}).data)


class LedgerView(EndpointView):
    endpoint = "credits.read"

    @extend_schema(
        operation_id="credits_ledger",
        summary="The caller's ledger entries, newest first",
        parameters=[PageQuerySerializer],
        responses={
            200: paginated("PaginatedLedgerEntryList", LedgerEntrySerializer(many=True)),
            **problems(*GATE_STATUSES, 404),
        },
    )
    def get(self, request: Request) -> Response:
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(ledger_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(LedgerEntrySerializer(page, many=True).data)
