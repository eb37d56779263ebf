"""Request context for logs and traces: a request id on every record and every response."""

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from jobsite.logs import bind_context, clear_context

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = offered if _SAFE_REQUEST_ID.match(offered) else uuid.uuid4().hex
        clear_context()
        bind_context(request_id=request_id, path=request.path, method=request.method)
        try:
            response = self.get_response(request)
        finally:
            clear_context()
        response[REQUEST_ID_HEADER] = request_id
        return response
