"""How every `tandem` command fails: one style, click's (`Error: <message>` on stderr, no
traceback), and an exit code that says which kind of failure it was.

    raise BadConfiguration(str(config_error))   # exit 2: the configuration or arguments are wrong
    raise CommandFailed("cannot listen on ...")  # exit 1: the command could not do its work
    raise CommandFailed(message, exit_code=5)   # a command's own documented code (tandem model)
"""

from __future__ import annotations

import click


class CommandFailed(click.ClickException):
    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self._exit_code = exit_code

    # click declares exit_code a class variable; each failure here carries its own.
    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return self._exit_code


class BadConfiguration(CommandFailed):
    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
