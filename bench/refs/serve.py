"""The command line every Python reference server shares: ``--host`` and ``--port``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from aiohttp import web


def serve(create_app: Callable[[], web.Application], prog: str, description: str | None) -> int:
    """Parse ``--host``/``--port`` and run the app until it is stopped (no access log)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda text: print(text, flush=True),
    )
    return 0
