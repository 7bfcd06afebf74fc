"""Our own Janus on loopback, for a small install and for tests (``SFU=janus`` without
``JANUS_URL``).

The configuration is generated into a private folder (0700) on every start:
- only the VideoRoom plugin and the HTTP transport are loaded (each folder holds a
  link to that one library), so no other plugin, transport, event handler or
  logger is reachable;
- the HTTP API listens on 127.0.0.1 only, on a free port; the admin API is off;
- VideoRoom's ``admin_key`` is a fresh random secret, so only this server can
  create rooms; room secrets and join tokens are the server's too
  (``teleconsult.rtc.janus``);
- ICE gathers on the interfaces named in ``ice_enforce_list`` (loopback and the
  machine's own test addresses in tests), RTP on ``rtp_port_range``;
- recordings go under ``<workdir>/recordings`` (0700), and are removed once
  post-processed and handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import aiohttp

from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

LIBRARY_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu/janus"),
    Path("/usr/lib/aarch64-linux-gnu/janus"),
    Path("/usr/lib/janus"),
    Path("/usr/local/lib/janus"),
)
START_TIMEOUT = 15.0


def find_janus() -> str | None:
    """The janus binary, or None."""
    return shutil.which("janus")


def _library(kind: str, name: str) -> Path:
    for base in LIBRARY_DIRS:
        path = base / kind / name
        if path.exists():
            return path
    raise InfrastructureError(f"janus: {kind}/{name} not found under {LIBRARY_DIRS}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"not a safe Janus configuration value: {value!r}")
    return f'"{value}"'


@dataclass
class JanusProcess:
    """One Janus process with a generated configuration under ``workdir``.

    ``url`` (the HTTP API) and ``admin_key`` (VideoRoom's room-creation key) are
    what :class:`teleconsult.rtc.janus.JanusSfu` needs. Not safe to start twice.
    """

    binary: str
    workdir: Path
    ice_enforce_list: str | None = None
    rtp_port_range: str = "20000-40000"
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    port: int = 0
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    @property
    def recordings(self) -> Path:
        return self.workdir / "recordings"

    @property
    def log(self) -> Path:
        return self.workdir / "janus.log"

    def _prepare(self) -> tuple[Path, BinaryIO]:
        """The configuration file, and the log the process writes to (opened)."""
        config = self._write_config()
        return config, open(self.log, "ab")  # noqa: SIM115 - handed to the child process

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.workdir, 0o700)
        conf = self.workdir / "conf"
        folders = {name: self.workdir / name for name in ("plugins", "transports", "empty")}
        for path in (conf, *folders.values()):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=0o700)
        self.recordings.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.recordings, 0o700)
        (folders["plugins"] / "libjanus_videoroom.so").symlink_to(
            _library("plugins", "libjanus_videoroom.so")
        )
        (folders["transports"] / "libjanus_http.so").symlink_to(
            _library("transports", "libjanus_http.so")
        )
        nat = [
            "\tnice_debug = false",
            "\tignore_mdns = true",
            "\tfull_trickle = false",
        ]
        if self.ice_enforce_list:
            nat.append(f"\tice_enforce_list = {_quote(self.ice_enforce_list)}")
        main = "\n".join(
            [
                "general: {",
                f"\tconfigs_folder = {_quote(str(conf))}",
                f"\tplugins_folder = {_quote(str(folders['plugins']))}",
                f"\ttransports_folder = {_quote(str(folders['transports']))}",
                f"\tevents_folder = {_quote(str(folders['empty']))}",
                f"\tloggers_folder = {_quote(str(folders['empty']))}",
                "\tdebug_level = 4",
                "\tsession_timeout = 60",
                "\treclaim_session_timeout = 0",
                '\tserver_name = "teleconsult-janus"',
                "\thide_dependencies = true",
                "}",
                "certificates: {",
                "}",
                "media: {",
                f"\trtp_port_range = {_quote(self.rtp_port_range)}",
                "}",
                "nat: {",
                *nat,
                "}",
                "plugins: {",
                "}",
                "transports: {",
                "}",
                "events: {",
                "\tbroadcast = false",
                "}",
                "",
            ]
        )
        http = "\n".join(
            [
                "general: {",
                '\tjson = "plain"',
                '\tbase_path = "/janus"',
                "\thttp = true",
                f"\tport = {self.port}",
                '\tip = "127.0.0.1"',
                "\thttps = false",
                "}",
                "admin: {",
                "\tadmin_http = false",
                "\tadmin_https = false",
                "}",
                "cors: {",
                "}",
                "",
            ]
        )
        videoroom = "\n".join(
            [
                "general: {",
                f"\tadmin_key = {_quote(self.admin_key)}",
                "\tlock_rtp_forward = true",
                "\tstring_ids = false",
                "}",
                "",
            ]
        )
        for name, text in (
            ("janus.jcfg", main),
            ("janus.transport.http.jcfg", http),
            ("janus.plugin.videoroom.jcfg", videoroom),
        ):
            path = conf / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        return conf / "janus.jcfg"

    async def start(self) -> None:
        self.port = self.port or _free_port()
        config, log = await asyncio.to_thread(self._prepare)
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config={config}",
                f"--configs-folder={config.parent}",
                "--disable-colors",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        logger.info("janus started on 127.0.0.1:%s", self.port)

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process is not None and self.process.returncode is not None:
                    raise InfrastructureError(
                        f"janus exited with {self.process.returncode}; see {self.log}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}/info") as resp:
                        info = await resp.json(content_type=None)
                        if "janus.plugin.videoroom" in info.get("plugins", {}):
                            return
                        raise InfrastructureError("janus answers without its VideoRoom plugin")
                if loop.time() > deadline:
                    raise InfrastructureError(f"janus did not start; see {self.log}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
