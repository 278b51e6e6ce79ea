"""The installed Tandem version, as both processes report it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def tandem_version() -> str:
    try:
        return version("tandem")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"
