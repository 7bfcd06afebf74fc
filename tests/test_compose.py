"""Static checks of docker-compose.yml: the production shape must hang together.

Docker is not needed: the file is read as YAML and cross-checked against the
app's own settings loader and the files in the repository.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from teleconsult.core.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
EXPECTED_SERVICES = ("app", "postgres", "redis", "mosquitto", "coturn", "livekit")

# Compose interpolation: ${NAME}, ${NAME:-default}, ${NAME:?error}; "$$" is a literal "$".
_INTERPOLATION = re.compile(r"\$\{[^}]*\}")


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def _services() -> dict[str, Any]:
    services = _load_compose()["services"]
    assert isinstance(services, dict)
    return services


def _interpolate(value: str) -> str:
    """Stand in for variables the operator supplies (e.g. POSTGRES_PASSWORD from .env)."""
    return _INTERPOLATION.sub("placeholder", value).replace("$$", "$")


def _app_environment() -> dict[str, str]:
    """The app's environment, whether written as a mapping or as KEY=VALUE items."""
    raw = _services()["app"]["environment"]
    if isinstance(raw, dict):
        pairs = {str(key): "" if value is None else str(value) for key, value in raw.items()}
    else:
        pairs = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            pairs[key] = value
    return {key: _interpolate(value) for key, value in pairs.items()}


# Secret files whose content has a shape of its own (deploy/secrets/README.md).
STAND_INS = {
    "RECORDING_KEYS_FILE": "1:" + base64.b64encode(b"k" * 32).decode("ascii"),
    "RECORDS_KEYS_FILE": "1:" + "ab" * 32,
}


def _settings_env(tmp_path: Path) -> dict[str, str]:
    """The app's environment made loadable here: local data dir, stand-in secret files."""
    env = _app_environment()
    env["TELECONSULT_DATA_DIR"] = str(tmp_path / "data")
    for name, path in list(env.items()):
        if name.endswith("_FILE") and not Path(path).exists():
            stand_in = tmp_path / f"{name.lower()}.txt"
            stand_in.write_text(STAND_INS.get(name, "x" * 64), encoding="utf-8")
            env[name] = str(stand_in)
    return env


def _host(uri: str) -> str | None:
    """Host of a URL, or of a TURN URI (``turn:host:port?transport=...``, RFC 7065)."""
    scheme, _, rest = uri.partition(":")
    if scheme in ("turn", "turns", "stun", "stuns"):
        return rest.split("?", 1)[0].rsplit(":", 1)[0] or None
    return urlsplit(uri).hostname


def _bind_sources(service: dict[str, Any]) -> list[str]:
    """Host paths of the service's bind mounts, short or long volume syntax."""
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
        elif volume.get("type", "bind") == "bind":
            source = str(volume.get("source", ""))
        else:
            continue
        if source.startswith((".", "/")):
            sources.append(source)
    return sources


def test_compose_file_parses_as_yaml() -> None:
    assert "services" in _load_compose()


@pytest.mark.parametrize("name", EXPECTED_SERVICES)
def test_service_is_defined(name: str) -> None:
    assert name in _services()


@pytest.mark.parametrize("name", EXPECTED_SERVICES)
def test_service_has_healthcheck_test(name: str) -> None:
    healthcheck = _services()[name].get("healthcheck") or {}
    assert healthcheck.get("test"), f"{name} has no healthcheck test"


def test_app_runs_two_replicas() -> None:
    assert _services()["app"]["deploy"]["replicas"] == 2


def test_app_environment_loads_through_settings(tmp_path: Path) -> None:
    settings = load_settings(_settings_env(tmp_path))

    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 8080


def test_app_service_urls_point_at_compose_services(tmp_path: Path) -> None:
    settings = load_settings(_settings_env(tmp_path))
    services = _services()

    urls = settings.service_urls()

    assert set(urls) == {"DATABASE_URL", "REDIS_URL", "MQTT_URL"}
    for name, url in urls.items():
        assert urlsplit(url).hostname in services, f"{name} host is not a compose service"


def test_turn_uris_point_at_compose_services() -> None:
    uris = _app_environment()["TURN_URIS"].split(",")
    services = _services()

    assert uris
    for uri in uris:
        assert uri.split(":", 1)[0] in ("turn", "turns"), uri
        assert _host(uri) in services, f"{uri} host is not a compose service"


def test_livekit_url_points_at_compose_service() -> None:
    assert _host(_app_environment()["LIVEKIT_URL"]) in _services()


def test_depends_on_targets_exist() -> None:
    services = _services()
    for name, service in services.items():
        depends_on = service.get("depends_on", [])
        targets = list(depends_on) if isinstance(depends_on, dict | list) else []
        missing = [target for target in targets if target not in services]
        assert not missing, f"{name} depends on unknown services {missing}"


def test_mounted_repository_files_exist() -> None:
    compose = _load_compose()
    secret_files = {str(secret.get("file")) for secret in (compose.get("secrets") or {}).values()}
    mounted = [
        source
        for service in compose["services"].values()
        for source in _bind_sources(service)
        if source not in secret_files and not source.startswith("./deploy/secrets/")
    ]

    assert mounted, "expected config files mounted from ./deploy"
    for source in mounted:
        assert (REPO_ROOT / source).exists(), f"{source} is mounted but missing"
