from django.urls import path

from accounts import views

urlpatterns = [
    path("me/mfa/totp/", views.TotpView.as_view(), name="me-mfa-totp"),
    path("me/mfa/totp/confirm/", views.TotpConfirmView.as_view(), name="me-mfa-totp-confirm"),
    path("auth/token/", views.TokenView.as_view(), name="auth-token"),
]
