"""py-spy on a server under load over a window, summed by function.

``Profile(pid, seconds, path)`` starts ``py-spy record --format raw`` (collapsed
stacks: one line per distinct stack with its sample count) against ``pid``
right away, bounded and dying with the benchmark through ``bench.procs``;
``await profile.finish()`` waits for it to end (py-spy stops by itself after
``seconds``) and returns the summary that ``profile_text`` prints:

* ``self``: the share of samples whose innermost frame is the function;
* ``total``: the share of samples with the function anywhere on the stack
  (asyncio's event loop, runpy and the entry point, on every stack, left out).

py-spy leaves idle threads out (a loop waiting in epoll is not sampled), so
the shares say where the server's CPU went. ``--nonblocking`` keeps py-spy
from stopping the server at each sample. The raw file stays at ``path`` for a
flame graph (``flamegraph.pl`` or speedscope read it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import REPO

TOP = 15
_LINE = re.compile(r":\d+\)$")
# Frames under every sample of an event-loop server: left out of "total", where they
# would crowd out the functions that tell something.
_SCAFFOLD = re.compile(r"\((asyncio/|<frozen runpy>|[^)]*/__main__\.py|[^)]*/cli\.py)")


def executable() -> str | None:
    """py-spy next to this Python (the venv's), else on the PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profile:
    """py-spy sampling ``pid`` for ``seconds`` from now; always ``await finish()``."""

    def __init__(self, pid: int, seconds: float, path: Path, *, rate: int = 100) -> None:
        self.path = path
        self.seconds = max(1, round(seconds))
        self.error: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        exe = executable()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return
        bound = ["--max-seconds", str(self.seconds + 60)]
        command = [sys.executable, "-m", "bench.procs", *bound, "--", exe, "record"]
        command += ["--pid", str(pid), "--duration", str(self.seconds), "--rate", str(rate)]
        command += ["--format", "raw", "--nonblocking", "--output", str(path)]
        self._proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    async def finish(self) -> dict[str, Any]:
        """The summary (``error`` set when py-spy wrote nothing)."""
        said = ""
        if self._proc is not None:
            try:
                out, _ = await asyncio.to_thread(self._proc.communicate, None, self.seconds + 30)
                said = out.decode(errors="replace").strip()
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
                said = "py-spy did not finish in time"
        if self.error is None and not self.path.exists():
            self.error = said.splitlines()[-1] if said else "py-spy wrote nothing"
        if self.error is not None:
            return {"file": str(self.path), "error": self.error}
        return {"file": str(self.path), **summarize(self.path)}


def _function(frame: str) -> str:
    """``name (package/module.py:123)`` without the line number."""
    return _LINE.sub(")", frame.strip())


def summarize(path: Path, top: int = TOP) -> dict[str, Any]:
    """Samples in all, and the ``top`` functions by self and by total share."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            if not _SCAFFOLD.search(name):
                anywhere[name] += n
    share = 1.0 / samples if samples else 0.0
    return {
        "samples": samples,
        "self": [[name, n * share] for name, n in own.most_common(top)],
        "total": [[name, n * share] for name, n in anywhere.most_common(top)],
    }


def profile_text(title: str, profile: dict[str, Any]) -> str:
    """The summary as printed under a benchmark's tables."""
    if profile.get("error"):
        return f"py-spy, {title}: {profile['error']}"
    lines = [f"py-spy, {title}: {profile['samples']} samples ({profile['file']})"]
    for key in ("self", "total"):
        lines.append(f"  by {key}:")
        lines.extend(f"    {share:6.1%}  {name}" for name, share in profile[key])
    return "\n".join(lines)
