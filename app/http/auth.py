"""The optional API key: with API_KEY set, protected routes need `Authorization: Bearer <key>`.

A dependency rather than a middleware, so the OpenAPI page shows which routes need the key
(and its "Authorize" button sends it), and the OpenAI routes can answer in OpenAI's error
shape. Public, whatever the setting: the playground page and its files (the page asks for
the key itself), /health and /livez (load balancers and orchestrators probe them),
/metrics (counts only: no prompt or text ever reaches it), and the API docs.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

# auto_error=False: a missing header is our 401 (with WWW-Authenticate), not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="the server's API_KEY, when it has one")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def key_matches(api_key: SecretStr | None, given: str | None) -> bool:
    """True when no key is configured, or `given` is that key (compared in constant time)."""
    if api_key is None:
        return True
    expected = api_key.get_secret_value().encode()
    return given is not None and secrets.compare_digest(given.encode(), expected)


async def require_api_key(request: Request, credentials: Credentials) -> None:
    """401 unless the request carries the configured key (a no-op when none is set)."""
    api_key: SecretStr | None = request.app.state.settings.api_key
    given = credentials.credentials if credentials is not None else None
    if not key_matches(api_key, given):
        message = "missing API key" if given is None else "invalid API key"
        raise HTTPException(
            status_code=401,
            detail=f"{message}: send `Authorization: Bearer <API_KEY>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


PROTECTED = [Depends(require_api_key)]
UNAUTHORIZED = {401: {"description": "API_KEY is set and the request lacks it"}}
