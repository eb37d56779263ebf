"""Structured logs (structlog over stdlib logging) with secrets redacted at the logging layer.

Every record, ours or a library's, passes through `redact` before it is rendered, so a secret that reaches
a log call by mistake still never reaches the output.
"""

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

SECRET_KEY_NAMES = re.compile(
    r"(authorization|api[_-]?key|password|passwd|secret|token|mfa[_-]?code|x-mfa-code|otp|cookie|signature)",
    re.IGNORECASE,
)
"""Event keys whose values are always replaced, whatever they hold."""

_SECRET_VALUES = [
    r"(?i:\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+)",
    r"\bwhsec_[A-Za-z0-9+/=]+",
    r"(\bjsk_[0-9a-f]+\.)[A-Za-z0-9_-]{8,}",  # API keys: the prefix identifies, the secret goes
    r"\bgAAAAA[A-Za-z0-9_=-]{20,}",  # Fernet tokens
    r"(?i:(x-mfa-code[\"']?\s*[:=]\s*[\"']?)\d{6})",
    r"\bv1,[A-Za-z0-9+/=]{20,}",  # webhook signatures
    r"(?i:(\bhttps?://[^\s?#\"'<>]*\?)[^\s#\"'<>]+)",  # query strings of URLs (tokens)
]
SECRET_VALUE_PATTERNS = [re.compile(source) for source in _SECRET_VALUES]
"""Secrets recognised inside any string value (messages included)."""
_ANY_SECRET_VALUE = re.compile("|".join(_SECRET_VALUES))
"""One pass that finds whether any of them occurs: most strings hold none, and seven substitutions each cost a
log line ~0.1 ms (bench/README.md)."""


def _scrub(text: str) -> str:
    if not _ANY_SECRET_VALUE.search(text):
        return text
    for pattern in SECRET_VALUE_PATTERNS:
        text = pattern.sub((r"\1" if pattern.groups else "") + REDACTED, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(key, str) and SECRET_KEY_NAMES.search(key):
        return REDACTED
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value("", v) for v in value)
    return value


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret-named fields' values and scrub secret-looking substrings."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


RQ_PER_JOB_LINES = frozenset(
    {
        "Worker %s: %s: %s",  # dequeued
        "Worker %s: %s: %s (%s)",  # dequeued (with the job's description), Job OK
        "Successfully completed %s job in %ss on worker %s",
        "Successfully completed job %s in %ss on worker %s",
    }
)
"""RQ's INFO lines of every job: jobs.execution's "job finished" says the same with the job's status and kind;
three more formatted lines a job cost a worker ~3% of its time on light jobs (bench/README.md)."""


class RqPerJobLinesFilter(logging.Filter):
    """Drops RQ's INFO lines of every job (RQ_PER_JOB_LINES); set unless LOG_LEVEL is DEBUG. Its start, stop,
    suspension and error lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or record.msg not in RQ_PER_JOB_LINES


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """The LOGGING dict for settings: stdlib records and structlog events share one redacting formatter."""
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": _shared_processors(),
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redact,
                    renderer,
                ],
            }
        },
        "filters": {"rq_per_job_lines": {"()": RqPerJobLinesFilter}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # SQL parameters carry secrets (TOTP seeds, key hashes): never log queries, whatever LOG_LEVEL says.
            "django.db.backends": {"level": "INFO"},
            "rq.worker": {"level": level, "filters": [] if level == "DEBUG" else ["rq_per_job_lines"]},
        },
    }


def configure_structlog() -> None:
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


def bind_context(**values: Any) -> None:
    """Add request/job context (request_id, user_id, job_id, endpoint) to every later record."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """A fresh context for one unit of work (an RQ task): nothing leaks in from the last one, or out."""
    clear_context()
    bind_context(**values)
    try:
        yield
    finally:
        clear_context()


logging.captureWarnings(True)
