"""TLS material: a self-signed pair for tests and demos, and the contexts that use it.

HTTPS for ``medshard serve`` (``tls_cert`` / ``tls_key``, handed to uvicorn) and DICOM TLS
for the DIMSE listener (``dimse_tls_*``, an :class:`ssl.SSLContext` handed to pynetdicom)
read PEM files named in the settings; relative paths are relative to the home
(:func:`resolve`). Production deployments bring certificates from the hospital's PKI;
:func:`write_self_signed` (``medshard tls self-signed --out DIR``, ``medshard demo --tls``)
makes a pair valid for loopback, which clients trust by pinning the certificate itself
(``httpx.Client(verify=cert)``, ``echoscu +tls key cert +cf cert``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medshard.errors import ConfigError

#: Names a self-signed certificate is valid for unless told otherwise.
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TlsPair:
    """A certificate (PEM) and its private key (PEM, readable by the owner only)."""

    cert: Path
    key: Path


def write_self_signed(
    out_dir: str | os.PathLike[str],
    *,
    name: str = "server",
    hosts: Sequence[str] = LOOPBACK_HOSTS,
    days: int = 365,
) -> TlsPair:
    """Write ``out_dir/{name}.crt`` and ``out_dir/{name}.key``, a self-signed pair for ``hosts``.

    The key is RSA 2048 (what every DICOM TLS profile and every HTTPS client accepts); the
    certificate names each of ``hosts`` as a subject alternative name (IP addresses as such),
    allows both server and client authentication, and is valid from an hour ago (clock skew)
    for ``days``. The key file is created with mode 0600. Existing files are replaced.

    Parameters
    ----------
    out_dir
        Folder to write to (created if missing).
    name
        File stem, and the certificate's common name suffix.
    hosts
        DNS names and IP addresses the certificate is valid for.
    days
        Validity.

    Returns
    -------
    TlsPair
        The paths written.

    Examples
    --------
    >>> pair = write_self_signed(tmp_path / "tls")  # doctest: +SKIP
    >>> httpx.get("https://127.0.0.1:8443/healthz", verify=str(pair.cert))  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medshard (self-signed)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"medshard {name}"),
        ]
    )
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = TlsPair(out / f"{name}.crt", out / f"{name}.key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pair.key.unlink(missing_ok=True)  # so the 0600 mode below applies to a fresh file
    fd = os.open(pair.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def resolve(home: Path, value: str) -> Path | None:
    """A path from the settings: None when empty, relative paths taken from the home."""
    return home / value if value else None


def check_pair(cert: Path | None, key: Path | None, what: str) -> TlsPair | None:
    """Both or neither: the pair to use for ``what``, or None for plain transport.

    Raises
    ------
    ConfigError
        Only one of the two is set, or a file is missing, or they do not load together.
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError(f"{what}: set both a certificate and a key, or neither")
    for path in (cert, key):
        if not path.is_file():
            raise ConfigError(
                f"{what}: {path} not found (make a test pair with `medshard tls self-signed`)"
            )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{what}: {cert} and {key} are not a usable pair: {exc}") from exc
    return TlsPair(cert, key)


def server_context(pair: TlsPair, ca: Path | None = None) -> ssl.SSLContext:
    """A server-side context (TLS 1.2+); with ``ca``, clients must present a certificate
    signed by it (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pair.cert, pair.key)
    if ca is not None:
        if not ca.is_file():
            raise ConfigError(f"client CA {ca} not found")
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path, pair: TlsPair | None = None) -> ssl.SSLContext:
    """A client-side context trusting ``ca`` (a CA, or a pinned self-signed certificate),
    presenting ``pair`` as client certificate if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx
