"""What the edge process costs: resident memory now, and how long it has been running.

`/readyz` reports both, so an operator (and `bench/edge_startup.py`) can see that the agent
stays light: it never imports litellm, and starts in well under a second.
"""

from __future__ import annotations

import os
import resource
import time


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), or the peak where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_age_seconds(fallback_start: float) -> float:
    """Seconds since this process was created (interpreter start-up included), from the
    kernel's start time; `time.monotonic() - fallback_start` where /proc is missing."""
    try:
        with open("/proc/self/stat", "rb") as f:
            # Field 22 (starttime, clock ticks after boot) follows the command name, which may
            # hold spaces: split after its closing parenthesis.
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - fallback_start
