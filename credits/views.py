"""Thin views over credits selectors (`credits.read`), and the caller's account with its balance (`account.read`)."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from accounts.api import EndpointView
from accounts.authentication import request_scopes
from accounts.endpoints import Endpoint
from accounts.requests import AuthenticatedRequest
from accounts.selectors import user_has_mfa, user_role_names
from credits.selectors import credit_balance, ledger_list
from credits.serializers import BalanceSerializer, LedgerEntrySerializer, MeSerializer
from jobsite.api import GATE_STATUSES, NewestFirstPagination, PageQuerySerializer, paginated, problems


class BalanceView(EndpointView):
    endpoint = Endpoint.CREDITS_READ

    @extend_schema(
        operation_id="credits_balance",
        summary="The caller's credit balance",
        responses={200: BalanceSerializer, **problems(*GATE_STATUSES)},
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        return Response(BalanceSerializer({"balance": credit_balance(user=request.user)}).data)


class LedgerView(EndpointView):
    endpoint = Endpoint.CREDITS_READ

    @extend_schema(
        operation_id="credits_ledger",
        summary="The caller's ledger entries, newest first",
        parameters=[PageQuerySerializer],
        responses={
            200: paginated("PaginatedLedgerEntryList", LedgerEntrySerializer(many=True)),
            **problems(*GATE_STATUSES, 404),
        },
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(ledger_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(LedgerEntrySerializer(page, many=True).data)


class MeView(EndpointView):
    endpoint = Endpoint.ACCOUNT_READ

    @extend_schema(operation_id="me", summary="The caller", responses={200: MeSerializer, **problems(*GATE_STATUSES)})
    def get(self, request: AuthenticatedRequest) -> Response:
        data = {
            "username": request.user.get_username(),
            "is_staff": request.user.is_staff,
            "roles": sorted(user_role_names(user=request.user)),
            "scopes": request_scopes(request),
            "mfa_enrolled": user_has_mfa(user=request.user),
            "balance": credit_balance(user=request.user),
        }
        return Response(MeSerializer(data).data)
