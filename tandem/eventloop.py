"""Running a process's main coroutine on the fastest event loop available."""

from __future__ import annotations

import asyncio


def run_loop(main: object) -> int:
    """Runs a coroutine on uvloop when available (faster I/O), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]
