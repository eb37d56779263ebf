"""The Django admin site: staff only, and an OTP code from staff who have a confirmed device."""

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class OptionalOtpAuthenticationForm(OTPAdminAuthenticationForm):
    """Password always; the OTP code only from users who enrolled a device."""

    def clean(self) -> dict[str, Any]:
        self.cleaned_data = super(OTPAdminAuthenticationForm, self).clean()
        user = self.get_user()
        if user is not None and user_has_device(user):
            self.clean_otp(user)
        return self.cleaned_data


class JobsiteAdminSite(OTPAdminSite):
    name = "admin"
    login_form = OptionalOtpAuthenticationForm
    site_header = "Jobsite administration"

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)

    def has_permission(self, request: HttpRequest) -> bool:
        if not AdminSite.has_permission(self, request):  # active staff
            return False
        return request.user.is_verified() or not user_has_device(request.user)
