"""Settings: typed, validated at start, errors name the variable, secrets from files."""

from __future__ import annotations

import json
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
