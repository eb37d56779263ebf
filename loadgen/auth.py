"""The one place that turns credentials into request headers."""

import base64


def auth_headers(*, api_key: str | None = None, basic: str | None = None) -> dict[str, str]:
    """`Authorization` for an API key (Bearer, API.md) or `user:password` (HTTP Basic); none if neither."""
    if api_key and basic:
        raise ValueError("give an API key or Basic credentials, not both")
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    if basic:
        if ":" not in basic:
            raise ValueError("Basic credentials read user:password")
        return {"Authorization": "Basic " + base64.b64encode(basic.encode()).decode("ascii")}
    return {}
