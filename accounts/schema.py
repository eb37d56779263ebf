"""OpenAPI: describe API-key authentication so Swagger UI offers `Authorization: Bearer <key>`."""

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "<prefix>.<secret>"}


class OtpSessionAuthenticationScheme(OpenApiAuthenticationExtension):
    """The session cookie of a sign-in that passed the OTP check (the admin's and the browsable API's)."""

    target_class = "accounts.authentication.OtpSessionAuthentication"
    name = "Session"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}
