"""/api-auth/: sign-in for the browsable API and Swagger UI, under DRF's URL names (`rest_framework:login`)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from accounts.login import ApiLoginView

app_name = "rest_framework"
urlpatterns = [
    path("login/", ApiLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
