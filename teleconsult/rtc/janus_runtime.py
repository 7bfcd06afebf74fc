"""Opening the Janus backend for the server (``SFU=janus``): our own Janus on loopback
unless ``JANUS_URL`` names one, the :class:`JanusSfu`, and its event handler.

With ``REDIS_URL`` the grants and the running recording are kept in Redis, so every
server process can serve every participant (docs/rtc.md, "Several server processes")."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator

from teleconsult.core.errors import ConfigError
from teleconsult.core.settings import SfuSettings
from teleconsult.rtc.janus_process import JanusProcess, find_janus
from teleconsult.rtc.janus_sfu import JanusSfu
from teleconsult.rtc.janus_state import create_janus_state
from teleconsult.rtc.sfu import SfuEventHandler


@contextlib.asynccontextmanager
async def janus_backend(
    settings: SfuSettings, handler: SfuEventHandler, *, redis_url: str | None = None
) -> AsyncIterator[JanusSfu]:
    """The Janus SFU, open until the block ends (then closed, and our Janus stopped)."""
    process: JanusProcess | None = None
    url, admin_key, recordings = settings.janus_url, settings.janus_admin_key, None
    if url is None:
        binary = find_janus()
        if binary is None:
            raise ConfigError("SFU", "SFU=janus needs JANUS_URL or the janus binary")
        process = JanusProcess(
            binary,
            settings.janus_workdir,
            ice_enforce_list=settings.janus_ice_enforce_list,
            rtp_port_range=settings.janus_rtp_port_range,
        )
        await process.start()
        url, admin_key, recordings = process.url, process.admin_key, process.recordings
    sfu = JanusSfu(
        url=url,
        admin_key=admin_key,
        room_key=settings.janus_room_key.encode(),
        recordings=recordings or settings.janus_recordings,
        pp_rec=shutil.which("janus-pp-rec"),
        state=create_janus_state(redis_url),
    )
    sfu.on_event(handler)
    try:
        await sfu.start()
        yield sfu
    finally:
        await sfu.wait_recordings()
        await sfu.close()
        if process is not None:
            await process.stop()
