from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """Custom from the start so accounts can grow fields without a painful swap later."""
