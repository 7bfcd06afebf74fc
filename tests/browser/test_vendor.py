"""The vendored browser libraries are the ones tools/vendor/refresh.sh built (checksums),
pinned in the lock file, and nothing at run or test time needs Node.js or a network."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "teleconsult" / "pages" / "static" / "vendor"
AXE_DIR = ROOT / "tests" / "browser" / "vendor"
TOOLS = ROOT / "tools" / "vendor"
BUNDLES = [
    "socket.io-client.js",
    "msgpack.js",
    "noble-ciphers.js",
    "noble-curves.js",
    "noble-hashes.js",
    "livekit-client.js",  # loaded by the room page only for a LiveKit grant
]


def _sums(folder: Path) -> dict[str, str]:
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


@pytest.mark.parametrize("folder", [VENDOR, AXE_DIR], ids=["pages", "axe"])
def test_every_vendored_file_matches_its_checksum(folder: Path) -> None:
    sums = _sums(folder)
    assert sums, f"{folder}/SHA256SUMS lists nothing"
    on_disk = {p.name for p in folder.iterdir() if p.name != "SHA256SUMS"}
    assert on_disk == set(sums), "a vendored file without a checksum, or a checksum without file"
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_the_page_bundles_are_all_there() -> None:
    assert sorted(_sums(VENDOR)) == sorted(BUNDLES)
    assert list(_sums(AXE_DIR)) == ["axe.min.js"]


def test_versions_are_pinned_exactly_and_locked() -> None:
    manifest = json.loads((TOOLS / "package.json").read_text())
    lock = json.loads((TOOLS / "package-lock.json").read_text())
    wanted = {**manifest["dependencies"], **manifest["devDependencies"]}
    for name in [
        "socket.io-client",
        "@msgpack/msgpack",
        "@noble/ciphers",
        "@noble/curves",
        "@noble/hashes",
        "livekit-client",
        "axe-core",
        "esbuild",
    ]:
        version = wanted[name]
        assert version[0].isdigit() and all(c not in version for c in "^~*<>| "), (name, version)
        locked = lock["packages"][f"node_modules/{name}"]
        assert locked["version"] == version, name
        assert locked["integrity"].startswith("sha512-"), name


@pytest.mark.parametrize("name", BUNDLES)
def test_each_bundle_is_one_self_contained_es_module(name: str) -> None:
    text = (VENDOR / name).read_text(encoding="utf-8")
    assert re.search(r"export\s*\{", text), f"{name} exports nothing"
    # Self-contained: no static or dynamic import of another file, package or URL.
    assert re.findall(r'(?:^|[;}\s])import\s*(?:[\w{}*,\s$]+from\s*)?["\']', text) == []
    assert re.findall(r'\bimport\(\s*["\']', text) == []
