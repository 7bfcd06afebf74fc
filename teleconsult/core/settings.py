"""Typed settings: one frozen dataclass per section, read from the environment once.

Every variable may also be given as ``NAME_FILE`` (a path whose content is the
value), which is how container secrets are usually mounted. A bad value raises
:class:`ConfigError` naming the variable, and the server does not start.

Secrets that are not configured (the JWT signing key) are generated at first
run under the data folder, so a development checkout holds no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from nacl.signing import SigningKey

from teleconsult.core.errors import ConfigError
from teleconsult.core.payment_settings import (  # --- payments (issue 15) ---
    PaymentSettings,
    load_payment_settings,
)

# OWASP Password Storage Cheat Sheet: argon2id with at least 19 MiB, t=2, p=1.
OWASP_MIN_MEMLIMIT_KIB = 19 * 1024
OWASP_MIN_OPSLIMIT = 2


class _Env:
    """Reads variables, resolving ``NAME_FILE`` and naming the variable on error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str) -> str | None:
        value = self._env.get(name)
        file_name = self._env.get(f"{name}_FILE")
        if value not in (None, "") and file_name:
            raise ConfigError(name, f"set either {name} or {name}_FILE, not both")
        if file_name:
            try:
                return Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{name}_FILE", f"cannot read {file_name}: {exc}") from exc
        return value if value not in (None, "") else None

    def text(self, name: str, default: str) -> str:
        value = self.get(name)
        return default if value is None else value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(name, f"must be {bound}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"expected a number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(name, f"must be >= {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"expected true or false, got {raw!r}")

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        raw = self.get(name)
        if raw is None:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ConfigError(name, f"scheme must be one of {', '.join(schemes)}")
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(name, "has no host")
        return raw

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    trust_forwarded_for: bool = False
    # Proxies in front that each append to X-Forwarded-For: the client is the entry
    # this many places from the right (the left-most entries are the client's own).
    trusted_proxy_count: int = 1
    # /metrics: with a token, only `Authorization: Bearer <token>` may read it; with a
    # port, it is served only on its own listener (metrics_host, loopback by default).
    metrics_token: str | None = field(repr=False, default=None)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class DatabaseSettings:
    """``url`` None means: run the embedded PostgreSQL under ``<data_dir>/pg``.

    ``owner_url`` names the role that owns the schema and runs migrations; the
    server then serves as ``url``'s role (``runtime_role``, granted what it needs
    and no more by every migrate; README, "Database"). Without ``owner_url``,
    ``url``'s role does both, with more privilege than it needs. A process that never
    migrates (``teleconsult worker``) waits up to ``schema_wait_seconds`` for the schema.
    """

    url: str | None = field(default=None, repr=False)
    pool_min: int = 1
    pool_max: int = 10
    owner_url: str | None = field(default=None, repr=False)
    runtime_role: str | None = None
    schema_wait_seconds: int = 300


@dataclass(frozen=True)
class RedisSettings:
    """``url`` None means: in-process bus and rate limiter (one server process)."""

    url: str | None = None


@dataclass(frozen=True)
class MqttSettings:
    """The MQTT chat transport (docs/mqtt.md).

    ``url`` names an external broker (Mosquitto, EMQX) that the server bridges,
    with the bridge's own credentials in it. When it is None the server runs an
    embedded broker on ``embedded_host:embedded_port``, unless that port is None
    (``MQTT_EMBEDDED_PORT=off`` or ``0``). ``shared_group`` names the MQTT 5
    shared subscription that lets several server processes take turns on
    requests (``MQTT_SHARED_GROUP=off``: a plain subscription, for a broker
    without them, and then only one server process may bridge it).
    """

    url: str | None = None
    embedded_port: int | None = 1883
    embedded_host: str = "127.0.0.1"
    shared_group: str = "teleconsult"
    # False when the port is the default: then a port already in use (say, a
    # system Mosquitto on 1883) turns the MQTT transport off with a warning
    # instead of stopping `make run`; a port the operator chose must work.
    embedded_port_required: bool = False
    # Each request must carry its device's Ed25519 signature (docs/mqtt.md,
    # "Signed requests"); False only for old clients during a migration.
    signed_requests: bool = True
    # How far a signed request's timestamp may be from the server's clock, in seconds.
    signature_window: int = 300
    # "dynsec": the server provisions devices' MQTT accounts on the Mosquitto at
    # ``url`` through its dynamic-security plugin (docs/mqtt.md); "off": the operator does.
    provisioning: str = "off"

    @property
    def enabled(self) -> bool:
        return self.url is not None or self.embedded_port is not None


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = field(repr=False, default="")
    issuer: str = "teleconsult"
    access_ttl: int = 900
    refresh_ttl: int = 30 * 24 * 3600
    password_memlimit_kib: int = 64 * 1024
    password_opslimit: int = 3
    # Wrong passwords per LOGIN_RATE_WINDOW from sources without a device token for the
    # account (OWASP device cookies); past it only such sign-ins are refused.
    login_max_per_account: int = 5
    login_max_per_address: int = 100
    login_window: int = 900
    # Wrong passwords per window sent with one device token; past it that token counts
    # as none. Tokens live device_token_ttl seconds.
    login_max_per_device: int = 10
    device_token_ttl: int = 180 * 24 * 3600
    # Wrong current passwords on POST /me/password per account and LOGIN_RATE_WINDOW.
    password_change_max_failures: int = 5
    # Registrations per client address per register_window seconds.
    register_max_per_address: int = 10
    register_window: int = 3600


@dataclass(frozen=True)
class SchedulingSettings:
    """Consultation join window and reminder offsets."""

    join_before_minutes: int = 15
    join_after_minutes: int = 30
    reminder_offsets_minutes: tuple[int, ...] = (24 * 60, 60)


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go: ``log`` (default) or a signed ``webhook``."""

    channel: str = "log"
    webhook_url: str | None = None
    webhook_secret: str = field(repr=False, default="")
    poll_interval: float = 1.0
    lease_seconds: int = 60
    run_in_server: bool = True


@dataclass(frozen=True)
class ChatSettings:
    """Real-time chat limits, per connection unless said otherwise."""

    max_frame_bytes: int = 256 * 1024
    events_per_second: float = 20.0
    event_burst: int = 40
    max_queued_events: int = 256
    typing_per_window: int = 5
    typing_window: int = 10
    presence_ttl: int = 60
    ping_interval: int = 25
    ping_timeout: int = 20
    offline_hook: bool = True
    max_envelope_bytes: int = 64 * 1024
    max_queued_bytes: int = 2 * 1024 * 1024
    # How often every live connection's login session is re-checked (one query for all).
    auth_recheck_seconds: float = 30.0
    # How long a thread's members and devices may be served from memory (see directory.py).
    directory_ttl: float = 30.0
    # Group commit: sends stored together in one round trip, and batches at once.
    append_batch: int = 64
    append_inflight: int = 2
    # Presence news goes to co-members of threads up to this size (bigger ones ask).
    presence_news_max_members: int = 50


@dataclass(frozen=True)
class SignalSettings:
    """Consultation rooms: peer-to-peer size, reconnect grace, message limits."""

    max_p2p_peers: int = 4
    grace_seconds: int = 30
    max_message_bytes: int = 64 * 1024
    heartbeat_seconds: int = 10
    # Joins at once share their access reads and room-event writes (natural batching).
    db_batch: int = 64
    db_inflight: int = 2


@dataclass(frozen=True)
class TurnSettings:
    """TURN credentials for coturn's ``use-auth-secret`` (docs/turn.md).

    ``secrets`` are newest first: the first signs; the others only mirror
    coturn's list during a rotation's overlap. ``uris`` are handed to clients
    as they are. ``user_ref_key`` keys the opaque user reference in TURN
    usernames. A client in a call gets fresh credentials ``refresh_before``
    seconds before its current ones expire.
    """

    secrets: tuple[str, ...] = field(repr=False, default=())
    uris: tuple[str, ...] = (
        "turn:127.0.0.1:3478?transport=udp",
        "turn:127.0.0.1:3478?transport=tcp",
        "turns:127.0.0.1:5349?transport=tcp",
    )
    ttl: int = 3600
    refresh_before: int = 300
    user_ref_key: str = field(repr=False, default="")
    max_per_minute: int = 30


@dataclass(frozen=True)
class AuditSettings:
    """The audit sequencer and its signed checkpoints (docs/architecture.md, Audit trail).

    ``signing_key`` is the 32-byte Ed25519 seed that signs checkpoints
    (``AUDIT_SIGNING_KEY``, 64 hex characters, or ``AUDIT_SIGNING_KEY_FILE``);
    the database never holds it. Unset, one is generated at first run into
    ``<data_dir>/audit-signing.key`` with its public key in ``audit-signing.pub``
    (``public_key_file``). Checkpoints are also appended to ``checkpoint_file``.
    The sequencer chains up to ``batch_size`` rows per transaction and polls the
    intake every ``interval`` seconds when idle.
    """

    signing_key: bytes = field(repr=False, default=b"")
    public_key: bytes = b""
    public_key_file: Path | None = None
    checkpoint_file: Path | None = None
    batch_size: int = 1000
    interval: float = 0.05
    # Refused authorization attempts recorded per actor and action each minute; past
    # it, one summary row per minute says how many more there were.
    refusals_per_minute: int = 10


@dataclass(frozen=True)
class RtcSettings:
    """The server's own WebRTC peer (docs/rtc.md): pre-call network tests.

    Each test decodes and re-encodes the caller's media, so the number running
    at once in one process is capped; each is closed after ``max_test_seconds``.

    The peer sends ICE checks only to public unicast addresses and to
    ``allowed_peer_networks`` (``RTC_ALLOWED_PEER_NETWORKS``, CIDRs; empty, the
    default, allows no loopback, private or link-local network). With
    ``public_ips`` (``RTC_PUBLIC_IP``: one address, or one IPv4 and one IPv6), its
    answers name only those addresses (and relay candidates), never the
    host's interfaces.
    """

    max_concurrent_tests: int = 8
    max_test_seconds: int = 30
    allowed_peer_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    public_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


def _rtc_networks(e: _Env) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    name = "RTC_ALLOWED_PEER_NETWORKS"
    networks = []
    for part in (e.get(name) or "").split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigError(name, f"{part.strip()!r} is not an address or CIDR") from None
    return tuple(networks)


def _rtc_public_ips(e: _Env) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    name = "RTC_PUBLIC_IP"
    found = []
    for part in (e.get(name) or "").split(","):
        if part.strip():
            try:
                address = ipaddress.ip_address(part.strip())
            except ValueError:
                raise ConfigError(name, f"{part.strip()!r} is not an IP address") from None
            if address.is_unspecified or address.is_multicast:
                raise ConfigError(name, f"{address} is not a unicast address")
            found.append(address)
    if len({a.version for a in found}) != len(found):
        raise ConfigError(name, "give at most one IPv4 and one IPv6 address")
    return tuple(found)


# --- records (issue 14) ---
@dataclass(frozen=True)
class RecordsSettings:
    """Master keys that wrap each clinic's field-encryption keys (docs/records.md).

    ``RECORDS_KEYS`` (or ``RECORDS_KEYS_FILE``): ``version:64-hex`` entries separated by
    commas or lines; the highest version wraps new keys, the others still unwrap old
    ones until ``teleconsult records rotate-key`` has re-wrapped everything. Without it,
    a key is generated at first run into ``<data_dir>/records-keys`` (0600).
    """

    master_keys: tuple[tuple[int, bytes], ...] = ()

    @property
    def current_version(self) -> int:
        return max(version for version, _ in self.master_keys)


def _records_keys(variable: str, text: str) -> tuple[tuple[int, bytes], ...]:
    keys: dict[int, bytes] = {}
    for part in re.split(r"[,\n]", text):
        if not part.strip():
            continue
        version, _, key_hex = part.strip().partition(":")
        try:
            number, key = int(version), bytes.fromhex(key_hex)
        except ValueError:
            number, key = 0, b""
        if not 0 < number < 2**31 or len(key) != 32 or number in keys:
            raise ConfigError(
                variable, "expected distinct version:key entries, e.g. 1:<64 hex characters>"
            )
        keys[number] = key
    if not keys:
        raise ConfigError(variable, "name at least one master key, e.g. 1:<64 hex characters>")
    return tuple(sorted(keys.items()))


def _records(e: _Env, data_dir: Path) -> RecordsSettings:
    raw = e.get("RECORDS_KEYS")
    if raw is not None:
        return RecordsSettings(master_keys=_records_keys("RECORDS_KEYS", raw))
    path = data_dir / "records-keys"
    _private_dir(data_dir)
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"1:{secrets.token_bytes(32).hex()}\n")
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return RecordsSettings(master_keys=_records_keys(str(path), path.read_text(encoding="ascii")))


# --- end records (issue 14) ---


# --- fhir export (issue 14, part F) ---
@dataclass(frozen=True)
class FhirSettings:
    """Bulk Data ``$export`` jobs (docs/fhir.md).

    Files go under ``FHIR_EXPORT_DIR`` (default ``<data_dir>/fhir-exports``), which
    every server process running exports must share. A worker holds a job by a lease
    of ``FHIR_EXPORT_LEASE_SECONDS`` that it renews while it writes; a job whose lease
    ran out (its server died) is taken over and resumed. ``FHIR_EXPORT_RETRY_AFTER``
    is the status poll interval clients are told (polling faster answers 429).
    ``FHIR_EXPORT_MAX_ROWS_PER_SECOND`` (0: unlimited) spares the database.
    """

    export_dir: Path = Path("var/fhir-exports")
    lease_seconds: int = 30
    poll_interval: float = 1.0
    retry_after: int = 2
    max_rows_per_second: int = 0
    expire_hours: int = 24
    run_in_server: bool = True


def _fhir(e: _Env, data_dir: Path, jobs_in_server: bool) -> FhirSettings:
    raw = e.get("FHIR_EXPORT_DIR")
    return FhirSettings(
        export_dir=Path(raw).resolve() if raw else data_dir / "fhir-exports",
        lease_seconds=e.integer("FHIR_EXPORT_LEASE_SECONDS", 30, minimum=1, maximum=3600),
        poll_interval=e.number("FHIR_EXPORT_POLL_INTERVAL", 1.0, minimum=0.05),
        retry_after=e.integer("FHIR_EXPORT_RETRY_AFTER", 2, minimum=1, maximum=3600),
        max_rows_per_second=e.integer("FHIR_EXPORT_MAX_ROWS_PER_SECOND", 0, minimum=0),
        expire_hours=e.integer("FHIR_EXPORT_EXPIRE_HOURS", 24, minimum=1, maximum=24 * 30),
        run_in_server=e.flag("FHIR_EXPORT_IN_SERVER", jobs_in_server),
    )


# --- end fhir export (issue 14, part F) ---


# --- livekit (issue 13, part L) ---
@dataclass(frozen=True)
class LiveKitSettings:
    """The LiveKit SFU backend (``SFU=livekit``; docs/rtc.md, "LiveKit").

    ``url`` is LiveKit's server URL (``LIVEKIT_URL``, http(s) or ws(s)); the API key
    and secret (``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET`` or ``_FILE``) sign join
    tokens and RoomService/Egress calls, and verify LiveKit's webhooks. Join
    tokens live ``token_ttl_minutes``. A webhook older than ``webhook_max_age``
    seconds is refused; event ids are remembered 24 hours. A recording with no
    news for ``egress_check_seconds`` is looked up with ListEgress, and ended as
    failed when LiveKit still has no final state after ``egress_deadline_seconds``.
    ``egress_dir`` is where egress writes files (a folder it shares with us).
    """

    url: str | None = None
    api_key: str = ""
    api_secret: str = field(repr=False, default="")
    token_ttl_minutes: int = 10
    webhook_max_age: int = 300
    egress_check_seconds: int = 60
    egress_deadline_seconds: int = 3600
    egress_dir: Path = Path("var/livekit-egress")

    @property
    def enabled(self) -> bool:
        return self.url is not None


def _livekit(e: _Env, data_dir: Path) -> LiveKitSettings:
    url = e.url("LIVEKIT_URL", ("http", "https", "ws", "wss"))
    key = e.get("LIVEKIT_API_KEY") or ""
    secret = e.get("LIVEKIT_API_SECRET") or ""
    if url is not None and not key:
        raise ConfigError("LIVEKIT_API_KEY", "required with LIVEKIT_URL")
    if url is not None and len(secret) < 32:
        raise ConfigError("LIVEKIT_API_SECRET", "required with LIVEKIT_URL, 32 characters or more")
    check = e.integer("LIVEKIT_EGRESS_CHECK_SECONDS", 60, minimum=1, maximum=3600)
    return LiveKitSettings(
        url=url,
        api_key=key,
        api_secret=secret,
        token_ttl_minutes=e.integer("LIVEKIT_TOKEN_TTL_MINUTES", 10, minimum=1, maximum=60),
        webhook_max_age=e.integer("LIVEKIT_WEBHOOK_MAX_AGE", 300, minimum=10, maximum=3600),
        egress_check_seconds=check,
        egress_deadline_seconds=e.integer(
            "LIVEKIT_EGRESS_DEADLINE_SECONDS", 3600, minimum=check, maximum=7 * 86400
        ),
        egress_dir=Path(e.text("LIVEKIT_EGRESS_DIR", str(data_dir / "livekit-egress"))).resolve(),
    )


# --- end livekit (issue 13, part L) ---


# --- sfu / janus (issue 13, part J) ---
@dataclass(frozen=True)
class SfuSettings:
    """Which SFU takes rooms past peer to peer (``SFU=none|janus|livekit``; docs/rtc.md).

    Janus: ``janus_url`` is its HTTP API (``JANUS_URL``); without it the server starts
    its own Janus on 127.0.0.1 (the ``janus`` binary must be installed).
    ``janus_admin_key`` is VideoRoom's ``admin_key`` of an external Janus
    (``JANUS_ADMIN_KEY`` or ``_FILE``). ``janus_room_key`` derives room numbers and
    secrets (``JANUS_ROOM_KEY`` or ``_FILE``; generated under the data folder).
    ``janus_recordings`` is where Janus writes .mjr files (a folder it shares with
    us; 0700). ``janus_ice_enforce_list`` limits the interfaces our own Janus gathers
    on; ``janus_rtp_port_range`` its RTP ports. A room on the SFU holds ``max_peers``.
    """

    kind: str = "none"
    janus_url: str | None = None
    janus_admin_key: str | None = field(repr=False, default=None)
    janus_room_key: str = field(repr=False, default="")
    janus_recordings: Path = Path("var/janus/recordings")
    janus_workdir: Path = Path("var/janus")
    janus_ice_enforce_list: str | None = None
    janus_rtp_port_range: str = "20000-40000"
    max_peers: int = 8


def _sfu(e: _Env, data_dir: Path, livekit: LiveKitSettings) -> SfuSettings:
    kind = e.choice("SFU", "none", ("none", "auto", "janus", "livekit"))
    if kind == "livekit" and not livekit.enabled:
        raise ConfigError("SFU", "SFU=livekit needs LIVEKIT_URL")
    url = e.url("JANUS_URL", ("http", "https"))
    if kind == "auto":  # `make run`: group calls on Janus when it is installed
        kind = "janus" if url is not None or shutil.which("janus") else "none"
    if kind == "janus" and url is None and shutil.which("janus") is None:
        raise ConfigError("SFU", "SFU=janus needs JANUS_URL or the janus binary (apt: janus)")
    ports = e.text("JANUS_RTP_PORT_RANGE", "20000-40000")
    if not re.fullmatch(r"\d{4,5}-\d{4,5}", ports):
        raise ConfigError("JANUS_RTP_PORT_RANGE", "expected MIN-MAX, e.g. 20000-40000")
    enforce = e.get("JANUS_ICE_ENFORCE_LIST")
    if enforce is not None and not re.fullmatch(r"[A-Za-z0-9_.:,-]+", enforce):
        raise ConfigError("JANUS_ICE_ENFORCE_LIST", "interface names or addresses, comma-separated")
    room_key = e.get("JANUS_ROOM_KEY")
    if kind == "janus" and room_key is None:
        room_key = _dev_secret(data_dir, "janus_room_key")
    workdir = Path(e.text("JANUS_WORKDIR", str(data_dir / "janus"))).resolve()
    return SfuSettings(
        kind=kind,
        janus_url=url.rstrip("/") if url else None,
        janus_admin_key=e.get("JANUS_ADMIN_KEY"),
        janus_room_key=room_key or "",
        janus_recordings=Path(
            e.text("JANUS_RECORDINGS_DIR", str(workdir / "recordings"))
        ).resolve(),
        janus_workdir=workdir,
        janus_ice_enforce_list=enforce,
        janus_rtp_port_range=ports,
        max_peers=e.integer("SFU_MAX_PEERS", 8, minimum=3, maximum=50),
    )


# --- end sfu / janus (issue 13, part J) ---


# --- recordings (issue 13, part R) ---
@dataclass(frozen=True)
class RecordingSettings:
    """Recordings sealed at rest (docs/rtc.md, "Recordings").

    ``keys`` are the master keys as (version, 32-byte key), newest first
    (``RECORDING_KEYS`` = ``2:base64,1:base64`` or ``RECORDING_KEYS_FILE``, one
    entry a line); unset, one generated at first run into
    ``<data_dir>/recording-keys`` (``keys_file``, 0600). ``storage`` is ``local``
    (a folder, ``RECORDING_DIR``, default ``<data_dir>/recordings``) or ``s3``
    (``RECORDING_S3_ENDPOINT``, ``_BUCKET``, ``_REGION``, ``_ACCESS_KEY``,
    ``_SECRET_KEY``, ``_PREFIX``). Objects are sealed in ``chunk_size`` chunks.
    The retention sweeper runs every ``sweep_seconds``.
    """

    keys: tuple[tuple[int, bytes], ...] = field(repr=False, default=())
    keys_file: Path | None = None
    storage: str = "local"
    local_dir: Path = Path("var/recordings")
    staging_dir: Path = Path("var/recordings-staging")
    s3_endpoint: str | None = None
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = field(repr=False, default="")
    s3_secret_key: str = field(repr=False, default="")
    s3_prefix: str = ""
    chunk_size: int = 64 * 1024
    sweep_seconds: float = 60.0


def parse_recording_keys(text: str) -> tuple[tuple[int, bytes], ...]:
    """``2:base64,1:base64`` (commas or newlines), newest first; ValueError says why not."""
    found: list[tuple[int, bytes]] = []
    for part in text.replace("\n", ",").split(","):
        entry = part.strip()
        if not entry:
            continue
        version_text, colon, key_text = entry.partition(":")
        if not colon or not version_text.strip().isdigit():
            raise ValueError("each entry is VERSION:BASE64KEY, e.g. 2:q83v...=")
        version = int(version_text)
        if not 0 < version < 2**32:
            raise ValueError(f"version {version} is out of range (1 to 4294967295)")
        try:
            key = base64.b64decode(key_text.strip(), validate=True)
        except ValueError:
            raise ValueError(f"key {version} is not base64") from None
        if len(key) != 32:
            raise ValueError(f"key {version} is {len(key)} bytes, not 32")
        found.append((version, key))
    versions = [v for v, _ in found]
    if not found:
        raise ValueError("no key given")
    if len(set(versions)) != len(versions):
        raise ValueError("versions must be distinct")
    if versions[0] != max(versions):
        raise ValueError("list the newest (highest) version first")
    return tuple(found)


def _dev_recording_keys(data_dir: Path) -> Path:
    """``<data_dir>/recording-keys`` (0600), created with one key on first use."""
    path = data_dir / "recording-keys"
    _private_dir(data_dir)
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write("1:" + base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
        try:
            os.link(tmp, path)  # never replaces keys another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path


def _recording(e: _Env, data_dir: Path) -> RecordingSettings:
    raw = e.get("RECORDING_KEYS")
    keys_file = None
    if raw is None:
        keys_file = _dev_recording_keys(data_dir)
        raw = keys_file.read_text(encoding="ascii")
    try:
        keys = parse_recording_keys(raw)
    except ValueError as exc:
        raise ConfigError("RECORDING_KEYS", str(exc)) from None
    storage = e.choice("RECORDING_STORAGE", "local", ("local", "s3"))
    endpoint = e.url("RECORDING_S3_ENDPOINT", ("http", "https"))
    bucket = e.text("RECORDING_S3_BUCKET", "")
    if storage == "s3" and (endpoint is None or not bucket):
        raise ConfigError("RECORDING_STORAGE", "s3 needs RECORDING_S3_ENDPOINT and _BUCKET")
    return RecordingSettings(
        keys=keys,
        keys_file=keys_file,
        storage=storage,
        local_dir=Path(e.text("RECORDING_DIR", str(data_dir / "recordings"))).resolve(),
        staging_dir=data_dir / "recordings-staging",
        s3_endpoint=endpoint,
        s3_bucket=bucket,
        s3_region=e.text("RECORDING_S3_REGION", "us-east-1"),
        s3_access_key=e.text("RECORDING_S3_ACCESS_KEY", ""),
        s3_secret_key=e.text("RECORDING_S3_SECRET_KEY", ""),
        s3_prefix=e.text("RECORDING_S3_PREFIX", ""),
        chunk_size=e.integer("RECORDING_CHUNK_SIZE", 64 * 1024, minimum=1024, maximum=16 << 20),
        sweep_seconds=e.number("RECORDING_SWEEP_SECONDS", 60.0, minimum=0.05),
    )


# --- end recordings (issue 13, part R) ---


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    http: HttpSettings
    database: DatabaseSettings
    redis: RedisSettings
    mqtt: MqttSettings
    auth: AuthSettings
    log: LogSettings
    public_url: str = "http://127.0.0.1:8080"
    # Where the background jobs run (server/jobs.py): in every server process, or only
    # in `teleconsult worker` processes (BACKGROUND_JOBS). The per-job *_IN_SERVER
    # flags default to it and, when set, win.
    background_jobs: Literal["server", "worker"] = "server"
    scheduling: SchedulingSettings = field(default_factory=SchedulingSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
    signal: SignalSettings = field(default_factory=SignalSettings)
    rtc: RtcSettings = field(default_factory=RtcSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    payments: PaymentSettings = field(default_factory=PaymentSettings)  # payments (issue 15)
    # --- recordings (issue 13, part R) ---
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    records: RecordsSettings = field(default_factory=RecordsSettings)  # records (issue 14)
    livekit: LiveKitSettings = field(default_factory=LiveKitSettings)  # livekit (issue 13 L)
    fhir: FhirSettings = field(default_factory=FhirSettings)  # fhir export (issue 14, F)
    sfu: SfuSettings = field(default_factory=SfuSettings)  # sfu / janus (issue 13, part J)

    def service_urls(self) -> dict[str, str]:
        """The external services these settings point at, by variable name."""
        urls = {
            "DATABASE_URL": self.database.url,
            "REDIS_URL": self.redis.url,
            "MQTT_URL": self.mqtt.url,
        }
        return {name: url for name, url in urls.items() if url}


def _dev_secret(data_dir: Path, name: str) -> str:
    """Return a secret kept in ``<data_dir>/secrets.json``, creating it on first use."""
    path = data_dir / "secrets.json"
    _private_dir(data_dir)
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
    if name not in stored:
        stored[name] = secrets.token_urlsafe(48)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(stored, handle)
        os.replace(tmp, path)
    return stored[name]


def _private_dir(data_dir: Path) -> None:
    """Create the data folder readable by the server's user only, whatever the umask
    (a folder that exists keeps its mode: the operator's choice)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def _metrics_token(e: _Env) -> str | None:
    token = e.get("METRICS_TOKEN")
    if token is not None and len(token) < 16:
        raise ConfigError("METRICS_TOKEN", "must be at least 16 characters")
    return token


_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")


def _url_user(url: str) -> str | None:
    """The user a PostgreSQL URL names (``user@`` or ``?user=``), if any."""
    parts = urlsplit(url)
    if parts.username:
        return unquote(parts.username)
    users = parse_qs(parts.query).get("user")
    return users[-1] if users else None


def _database(e: _Env, pool_min: int, pool_max: int) -> DatabaseSettings:
    url = e.url("DATABASE_URL", ("postgres", "postgresql"))
    owner_url = e.url("DATABASE_OWNER_URL", ("postgres", "postgresql"))
    role = e.get("DATABASE_RUNTIME_ROLE")
    if owner_url is not None and url is None:
        raise ConfigError(
            "DATABASE_OWNER_URL",
            "needs DATABASE_URL (the server's runtime role) too; without DATABASE_URL the "
            "embedded PostgreSQL sets up its own roles",
        )
    if role is not None and owner_url is None:
        raise ConfigError("DATABASE_RUNTIME_ROLE", "only means something with DATABASE_OWNER_URL")
    if owner_url is not None and url is not None:
        role = role or _url_user(url)
        if role is not None and not _ROLE_NAME.fullmatch(role):
            raise ConfigError("DATABASE_RUNTIME_ROLE", f"{role!r} is not a plain role name")
        owner = _url_user(owner_url)
        if role is not None and owner is not None and role == owner:
            raise ConfigError(
                "DATABASE_OWNER_URL",
                f"names the same role as DATABASE_URL ({role}); the owner and the server's "
                "runtime role must be two roles",
            )
    return DatabaseSettings(
        url=url,
        pool_min=pool_min,
        pool_max=pool_max,
        owner_url=owner_url,
        runtime_role=role,
        schema_wait_seconds=e.integer("DATABASE_SCHEMA_WAIT_SECONDS", 300, maximum=86_400),
    )


def _embedded_port(e: _Env) -> int | None:
    raw = e.get("MQTT_EMBEDDED_PORT")
    if raw is not None and raw.lower() in ("off", "false", "no"):
        return None
    port = e.integer("MQTT_EMBEDDED_PORT", 1883, minimum=0, maximum=65535)
    return port or None


def _shared_group(e: _Env) -> str:
    group = e.text("MQTT_SHARED_GROUP", "teleconsult")
    if group.lower() in ("off", "none"):
        return ""
    if any(c in group for c in "/+#") or group != group.strip():
        raise ConfigError("MQTT_SHARED_GROUP", "must not contain '/', '+', '#' or spaces")
    return group


_TURN_SECRET = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


def _turn_uri(uri: str) -> str:
    """A ``turn:``, ``turns:``, ``stun:`` or ``stuns:`` URI as RFC 7064/7065 allow it."""
    scheme, sep, rest = uri.partition(":")
    hostport, _, query = rest.partition("?")
    ok = bool(sep) and scheme in ("turn", "turns", "stun", "stuns")
    host_pattern = r"[A-Za-z0-9._-]+"
    if hostport.startswith("["):  # an IPv6 address
        host, bracket, port = hostport[1:].partition("]")
        ok = ok and bool(bracket) and (not port or port.startswith(":"))
        port = port[1:]
        host_pattern = r"[0-9A-Fa-f:.]+"
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    else:
        host, port = hostport, ""
    queries = ("", "transport=udp", "transport=tcp") if scheme.startswith("turn") else ("",)
    if not (
        ok
        and re.fullmatch(host_pattern, host)
        and (not port or (port.isascii() and port.isdigit() and 0 < int(port) < 65536))
        and query in queries
    ):
        raise ConfigError(
            "TURN_URIS", f"{uri!r} is not turn|turns|stun|stuns:host[:port][?transport=udp|tcp]"
        )
    return uri


def _signing_seed(variable: str, text: str) -> bytes:
    try:
        seed = bytes.fromhex(text.strip())
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ConfigError(variable, "expected 64 hex characters (a 32-byte Ed25519 seed)")
    return seed


def _dev_signing_key(data_dir: Path) -> tuple[bytes, Path]:
    """The generated audit signing key in ``<data_dir>``, created (0600) on first use,
    with its public key beside it; return the seed and the public key's path."""
    path = data_dir / "audit-signing.key"
    public = data_dir / "audit-signing.pub"
    _private_dir(data_dir)
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_bytes(32).hex() + "\n")
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    seed = _signing_seed("AUDIT_SIGNING_KEY", path.read_text(encoding="ascii"))
    public_hex = SigningKey(seed).verify_key.encode().hex() + "\n"
    if not public.exists() or public.read_text(encoding="ascii") != public_hex:
        # 0644 whatever the umask: `audit verify` trusts this key, so nobody else may write it.
        tmp = public.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(public_hex)
        os.replace(tmp, public)
    return seed, public


def _audit(e: _Env, data_dir: Path) -> AuditSettings:
    raw = e.get("AUDIT_SIGNING_KEY")
    public_key_file: Path | None = None
    if raw is None:
        seed, public_key_file = _dev_signing_key(data_dir)
    else:
        seed = _signing_seed("AUDIT_SIGNING_KEY", raw)
    checkpoint_file = e.get("AUDIT_CHECKPOINT_FILE")
    return AuditSettings(
        signing_key=seed,
        public_key=SigningKey(seed).verify_key.encode(),
        public_key_file=public_key_file,
        checkpoint_file=(
            data_dir / "audit-checkpoints.jsonl"
            if checkpoint_file is None
            else Path(checkpoint_file).resolve()
        ),
        batch_size=e.integer("AUDIT_BATCH_SIZE", 1000, minimum=1, maximum=10000),
        interval=e.number("AUDIT_INTERVAL", 0.05, minimum=0.005),
        refusals_per_minute=e.integer("AUDIT_REFUSALS_PER_MINUTE", 10, minimum=1, maximum=1000),
    )


def _turn(e: _Env, data_dir: Path, public_url: str, jwt_secret: str) -> TurnSettings:
    raw = e.get("TURN_SECRETS")
    if raw is None:
        turn_secrets: tuple[str, ...] = (_dev_secret(data_dir, "turn_secret"),)
    else:
        # Newest first, separated by commas (or one a line in a TURN_SECRETS_FILE).
        turn_secrets = tuple(part.strip() for part in re.split(r"[,\n]", raw) if part.strip())
        if not 0 < len(turn_secrets) <= 8 or len(set(turn_secrets)) != len(turn_secrets):
            raise ConfigError("TURN_SECRETS", "expected 1 to 8 distinct secrets, newest first")
        if not all(_TURN_SECRET.fullmatch(secret) for secret in turn_secrets):
            raise ConfigError(
                "TURN_SECRETS", "each secret must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -"
            )
    uris_raw = e.get("TURN_URIS")
    if uris_raw is None:
        host = urlsplit(public_url).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        uris: tuple[str, ...] = (
            f"turn:{host}:3478?transport=udp",
            f"turn:{host}:3478?transport=tcp",
            f"turns:{host}:5349?transport=tcp",
        )
    else:
        uris = tuple(_turn_uri(part.strip()) for part in uris_raw.split(",") if part.strip())
        if not any(uri.startswith("turn") for uri in uris):
            raise ConfigError("TURN_URIS", "name at least one turn: or turns: URI")
    ttl = e.integer("TURN_TTL", 3600, minimum=60, maximum=86400)
    # The user reference only has to be stable and unguessable. Without a key of its
    # own it is keyed by a digest of the JWT secret, which every replica shares.
    ref_key = e.get("TURN_USER_REF_KEY") or (
        hmac.new(jwt_secret.encode(), b"teleconsult/turn-user-ref-key", hashlib.sha256).hexdigest()
    )
    return TurnSettings(
        secrets=turn_secrets,
        uris=uris,
        ttl=ttl,
        refresh_before=e.integer(
            "TURN_REFRESH_BEFORE", min(300, ttl // 2), minimum=10, maximum=ttl // 2
        ),
        user_ref_key=ref_key,
        max_per_minute=e.integer("TURN_MAX_PER_MINUTE", 30, minimum=1),
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad one."""
    e = _Env(os.environ if env is None else env)
    data_dir = Path(e.text("TELECONSULT_DATA_DIR", "var")).resolve()

    http = HttpSettings(
        host=e.text("HOST", "127.0.0.1"),
        port=e.integer("PORT", 8080, minimum=0, maximum=65535),
        shutdown_timeout=e.number("SHUTDOWN_TIMEOUT", 10.0),
        max_body_bytes=e.integer("MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
        trust_forwarded_for=e.flag("TRUST_FORWARDED_FOR", False),
        trusted_proxy_count=e.integer("TRUSTED_PROXY_COUNT", 1, minimum=1, maximum=16),
        metrics_token=_metrics_token(e),
        metrics_port=(
            e.integer("METRICS_PORT", 0, minimum=1, maximum=65535)
            if e.get("METRICS_PORT") is not None
            else None
        ),
        metrics_host=e.text("METRICS_HOST", "127.0.0.1"),
    )
    pool_min = e.integer("DATABASE_POOL_MIN", 1, minimum=1)
    database = _database(
        e, pool_min, e.integer("DATABASE_POOL_MAX", max(10, pool_min), minimum=pool_min)
    )
    redis = RedisSettings(url=e.url("REDIS_URL", ("redis", "rediss", "unix")))
    mqtt = MqttSettings(
        url=e.url("MQTT_URL", ("mqtt", "mqtts", "tcp")),
        embedded_port=_embedded_port(e),
        embedded_host=e.text("MQTT_EMBEDDED_HOST", http.host),
        shared_group=_shared_group(e),
        embedded_port_required=e.get("MQTT_EMBEDDED_PORT") is not None,
        signed_requests=e.choice("MQTT_REQUEST_SIGNATURES", "required", ("required", "off"))
        == "required",
        signature_window=e.integer("MQTT_SIGNATURE_WINDOW", 300, minimum=10, maximum=86_400),
        provisioning=e.choice("MQTT_PROVISIONING", "off", ("off", "dynsec")),
    )
    if mqtt.provisioning != "off" and mqtt.url is None:
        raise ConfigError("MQTT_PROVISIONING", "needs MQTT_URL (the Mosquitto to provision)")

    jwt_secret = e.get("JWT_SECRET")
    if jwt_secret is None:
        jwt_secret = _dev_secret(data_dir, "jwt_secret")
    elif len(jwt_secret) < 32:
        raise ConfigError("JWT_SECRET", "must be at least 32 characters")
    auth = AuthSettings(
        jwt_secret=jwt_secret,
        issuer=e.text("JWT_ISSUER", "teleconsult"),
        access_ttl=e.integer("ACCESS_TOKEN_TTL", 900, minimum=30, maximum=3600),
        refresh_ttl=e.integer("REFRESH_TOKEN_TTL", 30 * 24 * 3600, minimum=300),
        password_memlimit_kib=e.integer(
            "PASSWORD_HASH_MEMLIMIT_KIB", 64 * 1024, minimum=OWASP_MIN_MEMLIMIT_KIB
        ),
        password_opslimit=e.integer("PASSWORD_HASH_OPSLIMIT", 3, minimum=OWASP_MIN_OPSLIMIT),
        login_max_per_account=e.integer("LOGIN_MAX_PER_ACCOUNT", 5, minimum=1),
        login_max_per_address=e.integer("LOGIN_MAX_PER_ADDRESS", 100, minimum=1),
        login_window=e.integer("LOGIN_RATE_WINDOW", 900, minimum=1),
        login_max_per_device=e.integer("LOGIN_MAX_PER_DEVICE", 10, minimum=1),
        device_token_ttl=e.integer("DEVICE_TOKEN_TTL", 180 * 24 * 3600, minimum=3600),
        password_change_max_failures=e.integer("PASSWORD_CHANGE_MAX_FAILURES", 5, minimum=1),
        register_max_per_address=e.integer("REGISTER_MAX_PER_ADDRESS", 10, minimum=1),
        register_window=e.integer("REGISTER_RATE_WINDOW", 3600, minimum=1),
    )
    log = LogSettings(
        level=e.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        format=e.choice("LOG_FORMAT", "json", ("json", "text")),
    )
    offsets_raw = e.text("REMINDER_OFFSETS_MINUTES", "1440,60")
    try:
        offsets = tuple(sorted({int(part) for part in offsets_raw.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError("REMINDER_OFFSETS_MINUTES", "expected minutes like 1440,60") from None
    if any(offset <= 0 for offset in offsets):
        raise ConfigError("REMINDER_OFFSETS_MINUTES", "offsets must be positive")
    scheduling = SchedulingSettings(
        join_before_minutes=e.integer("JOIN_BEFORE_MINUTES", 15, minimum=0, maximum=240),
        join_after_minutes=e.integer("JOIN_AFTER_MINUTES", 30, minimum=0, maximum=240),
        reminder_offsets_minutes=offsets,
    )
    jobs = e.choice("BACKGROUND_JOBS", "server", ("server", "worker"))
    background_jobs: Literal["server", "worker"] = "worker" if jobs == "worker" else "server"
    jobs_in_server = background_jobs == "server"
    channel = e.choice("NOTIFY_CHANNEL", "log", ("log", "webhook"))
    webhook_url = e.url("NOTIFY_WEBHOOK_URL", ("http", "https"))
    if channel == "webhook" and webhook_url is None:
        raise ConfigError("NOTIFY_WEBHOOK_URL", "required when NOTIFY_CHANNEL=webhook")
    webhook_secret = e.get("NOTIFY_WEBHOOK_SECRET") or _dev_secret(data_dir, "webhook_secret")
    notify = NotifySettings(
        channel=channel,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        poll_interval=e.number("NOTIFY_POLL_INTERVAL", 1.0, minimum=0.05),
        lease_seconds=e.integer("NOTIFY_LEASE_SECONDS", 60, minimum=1),
        run_in_server=e.flag("NOTIFY_IN_SERVER", jobs_in_server),
    )
    chat = ChatSettings(
        max_frame_bytes=e.integer("CHAT_MAX_FRAME_BYTES", 256 * 1024, minimum=16 * 1024),
        events_per_second=e.number("CHAT_EVENTS_PER_SECOND", 20.0, minimum=0.1),
        event_burst=e.integer("CHAT_EVENT_BURST", 40, minimum=1),
        max_queued_events=e.integer("CHAT_MAX_QUEUED_EVENTS", 256, minimum=8),
        typing_per_window=e.integer("CHAT_TYPING_PER_WINDOW", 5, minimum=1),
        typing_window=e.integer("CHAT_TYPING_WINDOW", 10, minimum=1),
        presence_ttl=e.integer("CHAT_PRESENCE_TTL", 60, minimum=5),
        ping_interval=e.integer("CHAT_PING_INTERVAL", 25, minimum=1),
        ping_timeout=e.integer("CHAT_PING_TIMEOUT", 20, minimum=1),
        offline_hook=e.flag("CHAT_OFFLINE_HOOK", True),
        max_envelope_bytes=e.integer(
            "CHAT_MAX_ENVELOPE_BYTES", 64 * 1024, minimum=1024, maximum=1024 * 1024
        ),
        max_queued_bytes=e.integer("CHAT_MAX_QUEUED_BYTES", 2 * 1024 * 1024, minimum=64 * 1024),
        auth_recheck_seconds=e.number("CHAT_AUTH_RECHECK_SECONDS", 30.0, minimum=0.1),
        directory_ttl=e.number("CHAT_DIRECTORY_TTL", 30.0, minimum=0.0),
        append_batch=e.integer("CHAT_APPEND_BATCH", 64, minimum=1, maximum=1000),
        append_inflight=e.integer("CHAT_APPEND_INFLIGHT", 2, minimum=1, maximum=64),
        presence_news_max_members=e.integer(
            "CHAT_PRESENCE_NEWS_MAX_MEMBERS", 50, minimum=2, maximum=10_000
        ),
    )
    signal = SignalSettings(
        max_p2p_peers=e.integer("SIGNAL_MAX_P2P_PEERS", 4, minimum=2, maximum=16),
        grace_seconds=e.integer("SIGNAL_GRACE_SECONDS", 30, minimum=1, maximum=600),
        max_message_bytes=e.integer("SIGNAL_MAX_MESSAGE_BYTES", 64 * 1024, minimum=4096),
        heartbeat_seconds=e.integer("SIGNAL_HEARTBEAT_SECONDS", 10, minimum=1, maximum=60),
        db_batch=e.integer("SIGNAL_DB_BATCH", 64, minimum=1, maximum=1000),
        db_inflight=e.integer("SIGNAL_DB_INFLIGHT", 2, minimum=1, maximum=64),
    )
    rtc = RtcSettings(
        max_concurrent_tests=e.integer("RTC_MAX_CONCURRENT_TESTS", 8, minimum=1, maximum=1000),
        max_test_seconds=e.integer("RTC_MAX_TEST_SECONDS", 30, minimum=1, maximum=600),
        allowed_peer_networks=_rtc_networks(e),
        public_ips=_rtc_public_ips(e),
    )
    public_url = e.url("PUBLIC_URL", ("http", "https")) or f"http://{http.host}:{http.port}"
    turn = _turn(e, data_dir, public_url, jwt_secret)
    audit = _audit(e, data_dir)
    records = _records(e, data_dir)  # records (issue 14)
    livekit = _livekit(e, data_dir)  # livekit (issue 13, part L)
    fhir = _fhir(e, data_dir, jobs_in_server)  # fhir export (issue 14, F)
    return Settings(
        data_dir=data_dir,
        http=http,
        database=database,
        redis=redis,
        mqtt=mqtt,
        auth=auth,
        log=log,
        public_url=public_url.rstrip("/"),
        background_jobs=background_jobs,
        scheduling=scheduling,
        notify=notify,
        chat=chat,
        turn=turn,
        signal=signal,
        rtc=rtc,
        audit=audit,
        recording=_recording(e, data_dir),  # --- recordings (issue 13, part R) ---
        records=records,  # records (issue 14)
        livekit=livekit,  # livekit (issue 13, part L)
        fhir=fhir,  # fhir export (issue 14, F)
        sfu=_sfu(e, data_dir, livekit),  # sfu / janus (issue 13, part J)
        payments=load_payment_settings(  # payments (issue 15)
            e, public_url.rstrip("/"), jobs_in_server=jobs_in_server
        ),
    )
