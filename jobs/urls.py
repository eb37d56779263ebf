from django.urls import path

from jobs import views

urlpatterns = [
    path("jobs/", views.JobListView.as_view(), name="jobs-list"),
    path("jobs/sync/", views.JobSyncView.as_view(), name="jobs-sync"),
    path("jobs/async/", views.JobAsyncView.as_view(), name="jobs-async"),
    path("jobs/export/", views.JobExportView.as_view(), name="jobs-export"),
    path("jobs/<uuid:job_id>/", views.JobDetailView.as_view(), name="jobs-detail"),
    path("jobs/<uuid:job_id>/events/", views.JobEventsView.as_view(), name="jobs-events"),
    path("jobs/<uuid:job_id>/cancel/", views.JobCancelView.as_view(), name="jobs-cancel"),
    path("jobs/<uuid:job_id>/webhook/redeliver/", views.WebhookRedeliverView.as_view(), name="jobs-webhook-redeliver"),
    path("me/webhook-secret/", views.WebhookSecretView.as_view(), name="me-webhook-secret"),
    path("me/webhooks/test/", views.WebhookTestView.as_view(), name="me-webhooks-test"),
    path("me/webhook-deliveries/", views.WebhookDeliveryListView.as_view(), name="me-webhook-deliveries"),
    path("me/limits/", views.LimitsView.as_view(), name="me-limits"),
]
