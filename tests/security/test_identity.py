"""Logins, sessions, tokens and OpenID Connect, through the gate on a real catalog."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from medshard.cluster.archive import Archive
from medshard.config import load_settings
from medshard.errors import AuthenticationError
from medshard.security.gate import Gate
from tests.conftest import TEST_ACCOUNT, Deployment, make_deployment

PASSWORD = "a-long-password"


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    d = make_deployment(tmp_path, node_count=3)
    d.cli("user", "add", "doc", "--role", "doctor", "--site", "st-marys", "--password", PASSWORD)
    yield d
    for node in d.nodes:
        node.stop()


def _gate(dep: Deployment, **overrides: object) -> Gate:
    settings = load_settings(dep.home)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return Gate(Archive(settings, probe=False))


def test_login_refresh_logout(dep: Deployment) -> None:
    with _gate(dep) as gate:
        pair = gate.login("doc", PASSWORD, "test")
        assert gate.authenticate(pair.access_token, "t").username == "doc"
        renewed = gate.refresh(pair.refresh_token, "test")
        with pytest.raises(AuthenticationError):
            gate.refresh(pair.refresh_token, "test")  # a refresh token works once
        principal = gate.authenticate(renewed.access_token, "t")
        gate.logout(principal, renewed.access_token)
        with pytest.raises(AuthenticationError):
            gate.authenticate(renewed.access_token, "t")


def test_repeated_failures_lock_the_account(dep: Deployment) -> None:
    with _gate(dep, lockout_after_failures=3, lockout_s=2) as gate:
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                gate.login("doc", "wrong-password", "test")
        with pytest.raises(AuthenticationError, match="locked"):
            gate.login("doc", PASSWORD, "test")  # even the right password, while locked
        time.sleep(2.2)
        assert gate.login("doc", PASSWORD, "test").access_token
        gate.audit.flush()
    events = json.loads(dep.cli("audit", "export").stdout)
    failed = [e for e in events if e["action"] == "login" and e["outcome"] == "failed"]
    assert len(failed) == 4 and all(e["actor"] == "doc" for e in failed)


def test_idle_sessions_expire(dep: Deployment) -> None:
    with _gate(dep, session_idle_timeout_s=1) as gate:
        token = gate.login("doc", PASSWORD, "test").access_token
        gate.authenticate(token, "t")
        time.sleep(1.3)
        gate.forget(token)  # past the per-process cache
        with pytest.raises(AuthenticationError, match="inactivity"):
            gate.authenticate(token, "t")


def test_api_tokens_are_stored_hashed_and_revocable(dep: Deployment) -> None:
    token = dep.cli_json("token", "create", TEST_ACCOUNT, "--name", "second")["token"]
    assert token.encode() not in Path(dep.settings.database_url[10:]).read_bytes()
    with _gate(dep) as gate:
        assert gate.authenticate(token, "t").role == "service"
    dep.cli("token", "revoke", token[:12])
    with _gate(dep) as gate, pytest.raises(AuthenticationError, match="revoked"):
        gate.authenticate(token, "t")
    dep.cli("user", "disable", "doc")
    with _gate(dep) as gate, pytest.raises(AuthenticationError):
        gate.login("doc", PASSWORD, "test")


def test_an_oidc_provider_can_issue_the_tokens(dep: Deployment, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    issuer = "https://keycloak.example/realms/hospital"
    oidc = {"oidc_issuer": issuer, "oidc_audience": "medshard", "oidc_jwks": str(jwks)}

    def token(**claims: object) -> str:
        now = datetime.now(UTC)
        body = {"iss": issuer, "aud": "medshard", "preferred_username": "doc",
                "iat": now, "exp": now + timedelta(minutes=5), **claims}  # fmt: skip
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    with _gate(dep, **oidc) as gate:
        principal = gate.authenticate(token(), "t")
        assert (principal.username, principal.role, principal.via) == ("doc", "doctor", "oidc")
        for bad in (token(iss="https://evil"), token(aud="other"), token(preferred_username="x"),
                    token(exp=datetime.now(UTC) - timedelta(minutes=1))):  # fmt: skip
            with pytest.raises(AuthenticationError):
                gate.authenticate(bad, "t")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(
            {"iss": issuer, "aud": "medshard", "preferred_username": "doc",
             "exp": datetime.now(UTC) + timedelta(minutes=5)},
            other, algorithm="RS256", headers={"kid": "k1"},
        )  # fmt: skip
        with pytest.raises(AuthenticationError):
            gate.authenticate(forged, "t")


def test_removing_a_calling_ae_that_is_not_allowed_says_so(dep: Deployment) -> None:
    dep.cli("dicom", "allow", "FARPACS", "--user", TEST_ACCOUNT)
    dep.cli("dicom", "remove", "FARPACS")
    again = dep.cli("dicom", "remove", "FARPACS", ok=False)  # a typo must not pass for done
    assert again.exit_code != 0 and "not an allowed calling AE" in again.output
    assert "FARPACS" not in dep.cli("dicom", "list").output
