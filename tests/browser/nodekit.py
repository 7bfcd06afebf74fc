"""Running the pages' own ES modules under Node.js, for the tests of their pure logic
(the chat envelope, the room's quality and ping figures): a ``.mjs`` driver beside the
test gets the static folder as its argument and one JSON command on stdin, and prints
one JSON answer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "teleconsult" / "pages" / "static"


def run_node(script: Path, command: dict[str, Any]) -> Any:
    """``command``'s answer from the driver ``script``; it must exit cleanly."""
    exe = shutil.which("node")
    assert exe, "these tests run the pages' modules under Node.js: install nodejs"
    done = subprocess.run(
        [exe, str(script), str(STATIC)],
        input=json.dumps(command),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
