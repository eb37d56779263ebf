"""Jobsite load generator: a stand-alone HTTP client (stdlib + httpx + standardwebhooks + matplotlib).

It never imports Django or any project module, so it can be pointed at any deployment of the service,
or, with `--compat`, at the original backend it replaces. Run `python -m loadgen --help`.
"""
