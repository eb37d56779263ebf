"""The job kinds registry: every kind is one module here, registered once, used by both modes."""

from jobs.kinds import fetch, hash, stats
from jobs.kinds.base import Kind, KindError, RunContext

KINDS: dict[str, Kind] = {kind.name: kind for kind in (hash.KIND, fetch.KIND, stats.KIND)}

__all__ = ["KINDS", "Kind", "KindError", "RunContext", "get_kind"]


def get_kind(name: str) -> Kind | None:
    return KINDS.get(name)
