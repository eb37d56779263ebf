"""One sign-in rule for the admin and the browsable API: the password, plus a TOTP code from every user who
enrolled a device (the session is then OTP-verified, django-otp); attempts throttled per account and per IP."""

from collections.abc import Callable
from functools import partial
from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm
from django_otp.forms import OTPAuthenticationForm

from accounts.throttling import login_throttled

THROTTLED_TEMPLATE = "accounts/login_throttled.html"


class OptionalOtpMixin(AuthenticationForm):
    """Password always; the OTP code only from users who enrolled a device (they cannot sign in without it)."""

    clean_otp: Callable[[AbstractBaseUser], None]  # django_otp's form mixin, after this class in the MRO

    def clean(self) -> dict[str, Any]:
        self.cleaned_data = AuthenticationForm.clean(self)  # password and confirm_login_allowed (admin: staff)
        user = self.get_user()
        if user is not None and user_has_device(user):
            self.clean_otp(user)
        return self.cleaned_data


class ApiLoginForm(OptionalOtpMixin, OTPAuthenticationForm):
    pass


class AdminLoginForm(OptionalOtpMixin, OTPAdminAuthenticationForm):
    pass


def throttled_login(request: HttpRequest, respond: Callable[[], HttpResponse]) -> HttpResponse:
    """Answer a sign-in unless this POST's account or address tried too often (then 429, nothing checked)."""
    if request.method == "POST" and login_throttled(request):
        return TemplateResponse(request, THROTTLED_TEMPLATE, status=429)
    return respond()


class ApiLoginView(auth_views.LoginView):
    """/api-auth/login/ for the browsable API and Swagger UI (DRF's own view asks for a password only)."""

    authentication_form = ApiLoginForm
    template_name = "accounts/login.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return throttled_login(request, partial(super().post, request, *args, **kwargs))
