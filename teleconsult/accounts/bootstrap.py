"""First run: create a demo clinic and its admin so a fresh server can be used at once."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from teleconsult.accounts.service import AccountService

logger = logging.getLogger(__name__)

FIRST_ADMIN_EMAIL = "admin@teleconsult.local"
CREDENTIALS_FILE = "initial-admin.txt"


@dataclass(frozen=True)
class FirstRun:
    """What :func:`ensure_first_clinic` found: the credentials file, and whether this
    start created it (only then is the password shown)."""

    credentials: Path | None
    created: bool


async def ensure_first_clinic(accounts: AccountService, data_dir: Path) -> FirstRun:
    """Create the first clinic and admin when there is no clinic at all.

    The generated password goes to ``<data_dir>/initial-admin.txt`` (mode 0600).
    ``created`` is true only on the start that made it: the server prints the
    password then and never again (a terminal's scroll-back or a log collector
    would otherwise get it on every start); later starts only say where the file is.
    """
    path = data_dir / CREDENTIALS_FILE
    created = False
    made = None
    if await accounts.count_clinics() == 0:
        password = secrets.token_urlsafe(15)
        made = await accounts.create_first_clinic(
            name="Demo Clinic",
            timezone="UTC",
            admin_email=FIRST_ADMIN_EMAIL,
            admin_password=password,
            admin_name="Clinic Admin",
        )
    if made is not None:
        clinic, admin = made
        text = f"email={admin.email}\npassword={password}\nclinic_id={clinic.id}\n"
        await asyncio.to_thread(_write_private, path, text)
        logger.info("created the first clinic %s and its admin", clinic.id)
        created = True
    exists = await asyncio.to_thread(path.exists)
    return FirstRun(credentials=path if exists else None, created=created and exists)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_credentials(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found
