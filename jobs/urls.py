from django.urls import path

from jobs import batch_views, views

urlpatterns = [
    path("jobs/", views.JobListView.as_view(), name="jobs-list"),
    path("jobs/sync/", views.JobSyncView.as_view(), name="jobs-sync"),
    path("jobs/async/", views.JobAsyncView.as_view(), name="jobs-async"),
    path("jobs/export/", views.JobExportView.as_view(), name="jobs-export"),
    path("jobs/<uuid:job_id>/", views.JobDetailView.as_view(), name="jobs-detail"),
    path("jobs/<uuid:job_id>/events/", views.JobEventsView.as_view(), name="jobs-events"),
    path("jobs/<uuid:job_id>/cancel/", views.JobCancelView.as_view(), name="jobs-cancel"),
    path("jobs/<uuid:job_id>/webhook/redeliver/", views.WebhookRedeliverView.as_view(), name="jobs-webhook-redeliver"),
    path("batches/", batch_views.BatchCollectionView.as_view(), name="batches"),
    path("batches/<uuid:batch_id>/", batch_views.BatchDetailView.as_view(), name="batches-detail"),
    path("batches/<uuid:batch_id>/jobs/", batch_views.BatchJobsView.as_view(), name="batches-jobs"),
    path("batches/<uuid:batch_id>/cancel/", batch_views.BatchCancelView.as_view(), name="batches-cancel"),
    path("batches/<uuid:batch_id>/results/", batch_views.BatchResultsView.as_view(), name="batches-results"),
    path("uploads/", batch_views.UploadCreateView.as_view(), name="uploads"),
    path("uploads/<uuid:upload_id>/", batch_views.UploadDetailView.as_view(), name="uploads-detail"),
    path("me/webhook-secret/", views.WebhookSecretView.as_view(), name="me-webhook-secret"),
    path("me/webhooks/test/", views.WebhookTestView.as_view(), name="me-webhooks-test"),
    path("me/webhook-deliveries/", views.WebhookDeliveryListView.as_view(), name="me-webhook-deliveries"),
    path("me/limits/", views.LimitsView.as_view(), name="me-limits"),
]
