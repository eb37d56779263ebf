from django.urls import path

from credits import views

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    path("credits/", views.BalanceView.as_view(), name="credits-balance"),
    path("credits/ledger/", views.LedgerView.as_view(), name="credits-ledger"),
]
