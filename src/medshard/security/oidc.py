"""An external OpenID Connect provider (e.g. Keycloak) as the issuer of access tokens.

With ``oidc_issuer`` set, a bearer token that is a JWT is verified against the provider's
JWKS (``oidc_jwks``: its URL, or a local JSON file), its issuer and audience; its
``preferred_username`` (else ``sub``) must name a medshard user, whose role, sites and
care-team relations apply unchanged. The local provider keeps working beside it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt

from medshard.config import Settings
from medshard.errors import AuthenticationError, ConfigError

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class OidcVerifier:
    def __init__(self, settings: Settings) -> None:
        if not settings.oidc_jwks:
            raise ConfigError("oidc_issuer is set but oidc_jwks (URL or file) is not")
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience or None
        source = settings.oidc_jwks
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if source.startswith(("http://", "https://")):
            self._client = jwt.PyJWKClient(source, cache_keys=True, lifespan=300)
        else:
            self._keys = jwt.PyJWKSet.from_dict(json.loads(Path(source).read_text()))

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._keys is not None
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AuthenticationError("the token's signing key is not in the provider's JWKS")

    def verify(self, token: str) -> tuple[str, datetime]:
        """The username a valid token names, and when it expires."""
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss"], "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthenticationError(f"the OpenID Connect token is not valid: {exc}") from exc
        username = claims.get("preferred_username") or claims.get("sub")
        if not username:
            raise AuthenticationError("the OpenID Connect token names no user")
        return str(username), datetime.fromtimestamp(int(claims["exp"]), UTC)
