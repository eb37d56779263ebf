from django.apps import AppConfig


class JobsConfig(AppConfig):
    verbose_name = "Jobs and policies"
    name = "jobs"
