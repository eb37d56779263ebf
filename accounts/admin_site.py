"""The Django admin site: staff only, and an OTP code from staff who have a confirmed device."""

from functools import partial
from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse
from django_otp import user_has_device
from django_otp.admin import OTPAdminSite

from accounts.login import AdminLoginForm, throttled_login
from accounts.models import User


class JobsiteAdminSite(OTPAdminSite):
    name = "admin"
    login_form = AdminLoginForm
    site_header = "Jobsite administration"
    site_title = "Jobsite admin"
    index_title = "Jobs, policies, accounts and credits"
    enable_nav_sidebar = False  # its 300 px are what the job list needs to fit 1366 px screens

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)

    def has_permission(self, request: HttpRequest) -> bool:
        if not AdminSite.has_permission(self, request):  # active staff
            return False
        user = request.user  # active staff: a User
        return isinstance(user, User) and (user.is_verified() or not user_has_device(user))

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return throttled_login(request, partial(super().login, request, extra_context))
