"""Bearer-token validation of the WebSocket upgrade, as ACS signs it.

ACS sends ``Authorization: Bearer <JWT>`` signed with RS256; the keys are published as a JWKS
(https://acscallautomation.communication.azure.com/calling/keys), the issuer is
https://acscallautomation.communication.azure.com and the audience is the ACS resource id.
PyJWT does the validation; keys come from a JWKS URL (fetched in a thread and cached by
``PyJWKClient``) or a JWKS file (read once).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import jwt

from callstream.shared.errors import AuthError, ConfigError
from callstream.shared.settings import AuthSettings

ALGORITHMS = ["RS256"]
JWKS_CACHE_S = 3600
# A token naming a key the JWKS does not hold makes PyJWT fetch the JWKS again, at most once in
# this many seconds (PyJWT >= 2.14): tokens with made-up key ids cannot make the gateway hammer
# the key server, nor queue a valid caller behind their fetches.
JWKS_REFETCH_COOLDOWN_S = 30.0


class TokenValidator:
    """Validates bearer tokens against the configured keys, issuer and audience."""

    def __init__(self, settings: AuthSettings) -> None:
        if not settings.enabled:
            raise ConfigError("token validation needs CS_AUTH_JWKS_URL or CS_AUTH_JWKS_FILE")
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._client: jwt.PyJWKClient | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        if settings.jwks_url:
            self._client = jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=JWKS_CACHE_S,
                timeout=10,
                cooldown_duration=JWKS_REFETCH_COOLDOWN_S,
            )
        elif settings.jwks_file:
            self._keys = _load_jwks_file(settings.jwks_file)

    async def validate(self, authorization: str | None) -> Mapping[str, Any]:
        """Claims of the token in an ``Authorization`` header value; raises AuthError."""
        if not authorization:
            raise AuthError("missing Authorization header (expected 'Bearer <token>')")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected 'Authorization: Bearer <token>'")
        token = token.strip()
        try:
            key = await self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return claims

    async def _signing_key(self, token: str) -> jwt.PyJWK:
        if self._client is not None:
            client = self._client
            return await asyncio.to_thread(client.get_signing_key_from_jwt, token)
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        try:
            return self._keys[str(kid)]
        except KeyError:
            raise jwt.InvalidKeyError(f"no key with kid {kid!r} in the JWKS file") from None


def _load_jwks_file(path: str) -> dict[str, jwt.PyJWK]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        keys = jwt.PyJWKSet.from_dict(data).keys
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"cannot load the JWKS file {path}: {exc}") from None
    return {str(key.key_id): key for key in keys}
