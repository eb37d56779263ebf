"""The caller's own account: TOTP enrolment and tokens, under the `account.write` / `auth.token` policies."""

import base64
import io

import qrcode
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response

from accounts.api import EndpointView
from accounts.authentication import BearerToken, request_api_key, request_scopes
from accounts.endpoints import Endpoint
from accounts.permissions import MFA_HEADER, require_mfa_code
from accounts.requests import AuthenticatedRequest
from accounts.selectors import user_has_mfa
from accounts.serializers import (
    MfaStatusSerializer,
    TokenSerializer,
    TotpConfirmSerializer,
    TotpEnrolmentSerializer,
)
from accounts.services import totp_confirm, totp_enrol, totp_remove
from accounts.tokens import token_mint
from jobsite.api import BODY_STATUSES, GATE_STATUSES, problems
from jobsite.errors import NotFound, PermissionDenied


def _qr_png_base64(text: str) -> str:
    buffer = io.BytesIO()
    qrcode.make(text).save(buffer)  # PNG: the default kind of both qrcode image factories
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class TotpEnrolmentView(EndpointView):
    """Enrolling the first device cannot demand a code of it: MfaVerified lets a user without one through."""

    endpoint = Endpoint.ACCOUNT_WRITE
    mfa_enrolment = True


class TotpView(TotpEnrolmentView):
    @extend_schema(
        operation_id="me_mfa_totp_enrol",
        summary="Start TOTP enrolment (needs scope account:write)",
        request=None,
        responses={201: TotpEnrolmentSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES)},
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        device = totp_enrol(user=request.user)
        uri = device.config_url
        data = {"provisioning_uri": uri, "qr_png": _qr_png_base64(uri)}
        return Response(TotpEnrolmentSerializer(data).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="me_mfa_totp_remove",
        summary="Remove the TOTP device (needs scope account:write and a code in X-MFA-Code)",
        parameters=[OpenApiParameter(MFA_HEADER, str, OpenApiParameter.HEADER, required=True)],
        responses={204: None, **problems(*GATE_STATUSES, 404)},
    )
    def delete(self, request: AuthenticatedRequest) -> Response:
        if not request.headers.get(MFA_HEADER, "").strip():
            require_mfa_code(request)  # the required header is missing: 401 mfa_required, device or not
        if not user_has_mfa(user=request.user):
            raise NotFound("No TOTP device is enrolled.")
        require_mfa_code(request)
        totp_remove(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TotpConfirmView(TotpEnrolmentView):
    @extend_schema(
        operation_id="me_mfa_totp_confirm",
        summary="Confirm TOTP enrolment with a first code (needs scope account:write)",
        request=TotpConfirmSerializer,
        responses={200: MfaStatusSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES)},
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        body = TotpConfirmSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        totp_confirm(user=request.user, code=body.validated_data["code"])
        return Response(MfaStatusSerializer({"mfa_enrolled": True}).data)


class TokenView(EndpointView):
    endpoint = Endpoint.AUTH_TOKEN

    @extend_schema(
        operation_id="auth_token",
        summary="Mint a short-lived bearer token from an API key (its scopes, dies with it) or an MFA-verified session",
        request=None,
        responses={200: TokenSerializer, **problems(*GATE_STATUSES)},
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        if isinstance(request.auth, BearerToken):
            raise PermissionDenied("A token cannot mint tokens: use the API key or the session it came from.")
        key = request_api_key(request)
        if key is None and not (user_has_mfa(user=request.user) and request.user.is_verified()):
            raise PermissionDenied("Minting from a session needs one signed in with a TOTP code: enrol a device first.")
        scopes = request_scopes(request)
        token, lifetime = token_mint(user=request.user, key=key, scopes=scopes)
        data = {"access": token, "token_type": "Bearer", "expires_in": lifetime, "scopes": scopes}
        return Response(TokenSerializer(data).data)
