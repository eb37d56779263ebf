"""The bare reference of issue 11: the original's `/sync` as a plain DRF view under the service's own settings.

It validates the body with the `hash` kind's serializer, runs the same hash, INSERTs the job's row and answers:
no gate, policy, rate limit, cache, circuit breaker, trace or metrics of a job. What it costs is Django, DRF,
the middleware, gunicorn and one INSERT; what Jobsite costs beyond it is its pipeline (bench/README.md).
"""

from functools import cache

from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from jobs.health import healthz
from jobs.kinds.hash import HashInput, compute_hash
from jobs.models import Job, JobMode, JobStatus


@cache
def _owner_id() -> int:
    """Any user owns the rows (the stack has made one): the reference reads no account."""
    return User.objects.order_by("pk").values_list("pk", flat=True)[0]


class BareSync(APIView):
    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = ()

    def post(self, request: Request) -> Response:
        serializer = HashInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        params = serializer.validated_data
        result = compute_hash(params["data"], params["iterations"])
        Job.objects.create(
            owner_id=_owner_id(),
            endpoint="bare.sync",
            kind="hash",
            mode=JobMode.SYNC,
            status=JobStatus.SUCCEEDED,
            input=dict(params),
            result=result,
        )
        return Response({"status": "success", "result": result})


urlpatterns = [path("sync", BareSync.as_view()), path("healthz", healthz)]
