"""Configuration in one place.

A deployment lives in a *home* directory (``--home`` or ``MEDSHARD_HOME``) holding
``medshard.toml``, the master key file and, by default, the SQLite catalog. Every tunable
is a field of :class:`Settings` with its default and meaning next to it; nothing else in
the code reads environment variables or config files.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medshard.errors import ConfigError

CONFIG_NAME = "medshard.toml"
MASTER_KEY_NAME = "master.key"
#: The key that seals metadata backups; copy it off the machine (losing the home loses it).
RECOVERY_KEY_NAME = "recovery.key"
HOME_ENV = "MEDSHARD_HOME"


@dataclass
class AnalysisRule:
    """Maps images to a model: every field that is set must match the instance."""

    model: str = "pneumonia"
    modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    body_parts: list[str] = field(default_factory=lambda: ["CHEST", ""])
    #: Expected share of positive findings among the images this rule sends to the model (the
    #: class prior its probabilities are adjusted to); 0 = the prior documented in the model
    #: card. ``site_priors`` overrides it for images from a named source site.
    prior: float = 0.0
    site_priors: dict[str, float] = field(default_factory=dict)


@dataclass
class Settings:
    """Every setting of a deployment. Defaults suit a single-machine demo."""

    home: Path
    #: SQLAlchemy URL of the catalog; empty means SQLite file ``catalog.db`` in the home.
    db_url: str = ""
    #: Fixed plaintext chunk size; objects larger than this are split (bytes).
    chunk_size: int = 4 * 1024 * 1024
    #: Number of shards S; shard = hash(patient id) mod S. Fixed at deployment.
    shards: int = 128
    #: Replicas k per chunk, on distinct nodes, distinct sites where possible.
    replicas: int = 3
    #: Durable acknowledgements needed before a write is acknowledged.
    write_quorum: int = 2
    #: Secret shared with the storage nodes; every request is signed with a key derived from
    #: it (HMAC-SHA256, see medshard/storage/node_auth.py); the secret itself is never sent.
    node_secret: str = ""
    #: Seconds a node may miss heartbeats before it is suspect, and before it is dead. Only a
    #: dead node's copies count as lost and are re-replicated automatically: a node that
    #: reboots within ``dead_after_s`` costs no copying (HDFS waits 10.5 min, Ceph 10 min).
    suspect_after_s: float = 10.0
    dead_after_s: float = 600.0
    #: Seconds between heartbeats (probes of every node's /health) by the service.
    heartbeat_interval_s: float = 2.0
    #: Scrubbing: bytes per second the service asks nodes to re-hash (every stored copy is
    #: re-verified, rate-limited so client I/O keeps its latency), and the pause between
    #: whole passes (seconds). 0 bytes/s disables scrubbing.
    scrub_bytes_per_s: int = 4 * 1024 * 1024
    scrub_pass_interval_s: float = 24 * 3600.0
    #: Background data movement (drain, care-team migration): bytes per second at most.
    rebalance_bytes_per_s: int = 16 * 1024 * 1024
    #: A chunk on a node that no catalog replica names is removed only after it has stayed
    #: unnamed this long (seconds), so a write still committing is never taken for an orphan.
    orphan_grace_s: float = 600.0
    #: Placement: a node whose observed availability is below this is used for a care-site
    #: copy only when no better node is near; nodes within this many ms of the nearest count
    #: as equally near (capacity-weighted hashing then spreads the load among them).
    min_reliability: float = 0.5
    near_slack_ms: float = 0.5
    #: Metadata backups (see medshard/cluster/metadata_backup.py): the service writes an
    #: encrypted snapshot of the catalog, settings and master key to ``replicas`` storage
    #: nodes every this many seconds (0 disables), and soon after a node joins, leaves or dies;
    #: the newest ``backup_keep`` backups are kept. Objects acknowledged after the newest
    #: backup are in the object journal instead (below), which ``medshard restore`` replays.
    backup_interval_s: float = 300.0
    backup_keep: int = 3
    #: Write-ahead object journal (medshard/cluster/journal.py): before a write is
    #: acknowledged, each group commit writes one sealed blob with the manifests of its
    #: objects to ``replicas`` nodes (``write_quorum`` must take it, or the writes fail).
    #: SQLite catalogs only (PostgreSQL has its standby); false: objects acknowledged after
    #: the newest backup are lost with the service's disk.
    journal: bool = True
    #: Audit events go to the nodes too (medshard/security/audit_shipping.py): the service
    #: ships those appended since its last shipment every this many seconds (0: never), so
    #: losing its disk loses at most this much of the audit log. With ``journal`` only.
    audit_ship_interval_s: float = 2.0
    #: Timeout for one request to a storage node (seconds).
    node_timeout_s: float = 30.0
    #: Concurrent chunk copies to one node travel in one batch request (less CPU per copy on
    #: the node and the service; see medshard/storage/put_batcher.py); false: a PUT each.
    node_put_batching: bool = True
    #: Parallel file imports in ``medshard import``.
    import_workers: int = 8
    #: Application service bind address.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: HTTPS for the service: certificate chain and private key (PEM; relative to the home).
    #: Both empty: plain HTTP. ``medshard tls self-signed --out DIR`` makes a pair for tests.
    tls_cert: str = ""
    tls_key: str = ""
    #: DIMSE service: port and AE title. Calling AEs are allowed in the catalog, each acting
    #: as a site's service account (``medshard dicom allow AE --user ACCOUNT``).
    dimse_port: int = 11112
    dimse_ae_title: str = "MEDSHARD"
    #: DICOM TLS (PS3.15 B.1): a second DIMSE listener on this port (0 = off) beside the plain
    #: one, with this certificate and key (PEM; relative to the home). With a CA file set,
    #: peers must present a client certificate signed by it.
    dimse_tls_port: int = 0
    dimse_tls_cert: str = ""
    dimse_tls_key: str = ""
    dimse_tls_ca: str = ""
    #: C-MOVE destinations: AE title -> [host, port].
    dimse_destinations: dict[str, list[Any]] = field(default_factory=dict)
    #: Origins allowed by CORS (for browser viewers such as OHIF on another origin).
    cors_origins: list[str] = field(default_factory=list)
    #: Security: an access token lives this long, and dies sooner after this much idle time.
    access_token_ttl_s: int = 3600
    session_idle_timeout_s: int = 900
    #: A refresh token (to get a new access token without the password) lives this long.
    refresh_token_ttl_s: int = 8 * 3600
    #: Failed logins in a row that lock an account, and for how long.
    lockout_after_failures: int = 5
    lockout_s: int = 900
    #: Break-glass access lasts this long; shares with experts at most this many days.
    break_glass_minutes: float = 60.0
    max_share_days: int = 90
    #: Optional external OpenID Connect provider (e.g. Keycloak) whose JWTs are accepted
    #: beside local tokens: issuer URL, audience, and the JWKS URL (or a local JWKS file path).
    #: Its ``preferred_username`` claim must name a medshard user, who keeps their role.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks: str = ""
    #: Largest size a deflated data set may inflate to, and one frame may decode to (bytes).
    #: Ingest refuses bigger files (deflate bombs); reads inflate at most this much in memory.
    max_decompressed_bytes: int = 1024**3
    #: Seconds an HTTP client may send nothing while its request (headers or body) is
    #: incomplete before the service answers 408 and closes the connection.
    http_idle_timeout_s: float = 30.0
    #: Largest STOW-RS request body (bytes); bigger studies are sent in several requests.
    stow_max_request_bytes: int = 8 * 1024**3
    #: Analysis on ingest: rules mapping images to models; empty disables it.
    analysis_rules: list[AnalysisRule] = field(default_factory=lambda: [AnalysisRule()])

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def master_key_path(self) -> Path:
        return self.home / MASTER_KEY_NAME

    @property
    def recovery_key_path(self) -> Path:
        return self.home / RECOVERY_KEY_NAME

    @property
    def database_url(self) -> str:
        """The catalog URL, SQLite in the home unless ``db_url`` says otherwise."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.home / 'catalog.db'}"

    def validate(self) -> None:
        """Refuse settings that would silently lose durability."""
        if self.replicas < 1:
            raise ConfigError("replicas must be at least 1")
        if not 1 <= self.write_quorum <= self.replicas:
            raise ConfigError(
                f"write_quorum {self.write_quorum} must be between 1 and replicas {self.replicas}"
            )
        if self.chunk_size < 4096:
            raise ConfigError("chunk_size must be at least 4096 bytes")
        if self.shards < 1:
            raise ConfigError("shards must be at least 1")
        if self.backup_keep < 1:
            raise ConfigError("backup_keep must be at least 1 (the newest backup is never deleted)")
        for rule in self.analysis_rules:
            for prior in (rule.prior, *rule.site_priors.values()):
                if not 0.0 <= float(prior) < 1.0:
                    raise ConfigError(f"analysis prior {prior} of {rule.model} is not in [0, 1)")

    def save(self) -> None:
        """Write the settings back to ``medshard.toml`` in the home."""
        self.home.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self)
        data.pop("home")
        self.config_path.write_text(_to_toml(data))


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """The deployment home: the argument, else ``MEDSHARD_HOME``, else ``./medshard-home``."""
    if home:
        return Path(home).expanduser().resolve()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path("medshard-home").resolve()


def load_settings(home: str | os.PathLike[str] | None = None) -> Settings:
    """Read the settings of an initialised home; raises :class:`ConfigError` if there is none."""
    path = resolve_home(home)
    cfg = path / CONFIG_NAME
    if not cfg.exists():
        raise ConfigError(f"no medshard home at {path}: run `medshard init --home {path}` first")
    try:
        raw = tomllib.loads(cfg.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg} is not valid TOML: {exc}") from exc
    return settings_from_dict(path, raw)


def settings_from_dict(home: Path, raw: dict[str, Any]) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)} - {"home"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown settings in {home / CONFIG_NAME}: {sorted(unknown)}")
    values = dict(raw)
    if "analysis_rules" in raw:
        values["analysis_rules"] = [AnalysisRule(**r) for r in raw["analysis_rules"]]
    settings = Settings(home=home, **values)
    settings.validate()
    return settings


def new_settings(home: Path, **overrides: Any) -> Settings:
    """Fresh settings for ``medshard init``, with a random node secret."""
    settings = Settings(home=home, node_secret=secrets.token_urlsafe(32), **overrides)
    settings.validate()
    return settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _to_toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for our flat settings plus arrays of tables."""
    lines = ["# medshard deployment settings (see medshard/config.py for each field)"]
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        elif isinstance(value, list) and not value and key == "analysis_rules":
            lines.append(f"{key} = []")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, rows in tables:
        for row in rows:
            lines.append("")
            lines.append(f"[[{key}]]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in row.items())
    return "\n".join(lines) + "\n"
