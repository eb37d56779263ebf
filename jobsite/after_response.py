"""Work a request leaves until its response is sent.

A WSGI server calls the response's close() once it has written the body, and Django then sends request_finished:
actions deferred with run_once_sent run there, in the request's thread. An async acknowledgement queues its job
there, so the job's webhook can never reach a caller before the acknowledgement that names it (the original
backend's background task ran after its response too, and its clients count on that). A sync job's result is
copied to the result cache there, off its caller's wait. Written by hand: Django has
no per-request hook after the response, only the signal.
"""

import logging
from collections.abc import Callable
from contextvars import ContextVar

from django.core.signals import request_finished
from django.dispatch import receiver

logger = logging.getLogger(__name__)

_actions: ContextVar[list[Callable[[], object]] | None] = ContextVar("after_response_actions", default=None)


def send_response_first() -> None:
    """From now until the current response is sent, run_once_sent waits for that (a view calls this)."""
    _run_deferred()  # a response of this thread that never closed must not keep its actions from running
    _actions.set([])


def run_once_sent(action: Callable[[], object]) -> None:
    """Run `action` once the current response is sent (after send_response_first), else now."""
    actions = _actions.get()
    if actions is None:
        action()
    else:
        actions.append(action)


@receiver(request_finished, dispatch_uid="jobsite.after_response")
def _run_deferred(**kwargs: object) -> None:
    actions = _actions.get()
    _actions.set(None)
    for action in actions or ():
        try:
            action()
        except Exception:  # a signal receiver's error would end the server's close(): log it, run the rest
            logger.exception("an action deferred until the response was sent failed")
