"""Settings: typed, validated at start, errors name the variable, secrets from files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from teleconsult.core.errors import ConfigError
from teleconsult.core.settings import load_settings


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"TELECONSULT_DATA_DIR": str(tmp_path), **extra}


def test_defaults_run_embedded_on_loopback(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path))
    assert settings.http.host == "127.0.0.1"
    assert settings.http.port == 8080
    assert settings.database.url is None
    assert settings.redis.url is None
    assert settings.auth.access_ttl == 900


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("REDIS_URL", "redis://"),
        ("ACCESS_TOKEN_TTL", "5"),
        ("PASSWORD_HASH_MEMLIMIT_KIB", "1024"),
        ("PASSWORD_HASH_OPSLIMIT", "1"),
        ("LOG_LEVEL", "LOUD"),
        ("TRUST_FORWARDED_FOR", "maybe"),
        ("JWT_SECRET", "short"),
    ],
)
def test_a_bad_value_names_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env(tmp_path, **{variable: value}))
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt"
    secret_file.write_text("s" * 40 + "\n")
    settings = load_settings(_env(tmp_path, JWT_SECRET_FILE=str(secret_file)))
    assert settings.auth.jwt_secret == "s" * 40


def test_a_missing_secret_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env(tmp_path, JWT_SECRET_FILE=str(tmp_path / "absent")))
    assert caught.value.variable == "JWT_SECRET_FILE"


def test_value_and_file_together_are_ambiguous(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt"
    secret_file.write_text("s" * 40)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env(tmp_path, JWT_SECRET="t" * 40, JWT_SECRET_FILE=str(secret_file)))
    assert caught.value.variable == "JWT_SECRET"


def test_dev_secret_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = load_settings(_env(tmp_path))
    second = load_settings(_env(tmp_path))
    assert first.auth.jwt_secret == second.auth.jwt_secret
    assert len(first.auth.jwt_secret) >= 32
    path = tmp_path / "secrets.json"
    assert json.loads(path.read_text())["jwt_secret"] == first.auth.jwt_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path))
    with pytest.raises(AttributeError):
        settings.http.port = 1  # type: ignore[misc]


def test_service_urls_lists_only_configured_services(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path, REDIS_URL="redis://cache:6379/0"))
    assert settings.service_urls() == {"REDIS_URL": "redis://cache:6379/0"}


def test_audit_signing_key_is_generated_once_with_its_public_key_beside_it(
    tmp_path: Path,
) -> None:
    first = load_settings(_env(tmp_path)).audit
    second = load_settings(_env(tmp_path)).audit
    key_file = tmp_path / "audit-signing.key"
    assert first.signing_key == second.signing_key
    assert len(first.signing_key) == 32
    assert key_file.read_text().strip() == first.signing_key.hex()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.public_key_file == tmp_path / "audit-signing.pub"
    assert first.public_key_file.read_text().strip() == first.public_key.hex()
    assert first.checkpoint_file == tmp_path / "audit-checkpoints.jsonl"
    assert (first.batch_size, first.interval) == (1000, 0.05)
    assert first.signing_key.hex() not in repr(first)


def test_a_configured_audit_signing_key_is_used_and_nothing_is_generated(tmp_path: Path) -> None:
    seed = bytes(range(32))
    key_file = tmp_path / "seed"
    key_file.write_text(seed.hex() + "\n")
    audit = load_settings(
        _env(
            tmp_path / "data",
            AUDIT_SIGNING_KEY_FILE=str(key_file),
            AUDIT_CHECKPOINT_FILE=str(tmp_path / "cp.jsonl"),
            AUDIT_BATCH_SIZE="250",
            AUDIT_INTERVAL="0.2",
        )
    ).audit
    assert audit.signing_key == seed
    assert (audit.public_key_file, audit.checkpoint_file) == (None, tmp_path / "cp.jsonl")
    assert (audit.batch_size, audit.interval) == (250, 0.2)
    assert not (tmp_path / "data" / "audit-signing.key").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AUDIT_SIGNING_KEY", "not-hex"),
        ("AUDIT_SIGNING_KEY", "00" * 31),
        ("AUDIT_BATCH_SIZE", "0"),
        ("AUDIT_INTERVAL", "0"),
    ],
)
def test_a_bad_audit_setting_names_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env(tmp_path, **{variable: value}))
    assert caught.value.variable == variable


def test_generated_secrets_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 000 the data folder is still 0700, the secrets 0600, and the audit
    public key 0644: `audit verify` trusts that key, so nobody else may write it."""
    data_dir = tmp_path / "fresh"
    old = os.umask(0)
    try:
        env = {"DATABASE_URL": "postgresql://x@127.0.0.1/x", "TELECONSULT_DATA_DIR": str(data_dir)}
        load_settings(env)
    finally:
        os.umask(old)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "audit-signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "audit-signing.pub").stat().st_mode) == 0o644
