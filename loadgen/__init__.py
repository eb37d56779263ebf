"""Jobsite load generator: a stand-alone HTTP client (stdlib + httpx + jobsite-client + matplotlib).

It never imports Django or any project module, so it can be pointed at any deployment of the service,
or, with `--compat`, at the original backend it replaces. Run `python -m loadgen --help`.

It sends its own requests (one code path, timed around the HTTP exchange alone, for both the service's API
and the original backend's routes, which jobsite-client does not speak), and takes from jobsite-client the
job model that recognises a success and the Standard Webhooks verification of callbacks.
"""

import sys
from pathlib import Path

CLIENT_SOURCE = Path(__file__).resolve().parent.parent / "jobsite-client"
"""The client package of this repository, which loadgen is versioned with: preferred over an installed one."""

if CLIENT_SOURCE.is_dir():
    sys.path.insert(0, str(CLIENT_SOURCE))
