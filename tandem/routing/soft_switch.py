"""Qwen3's soft switches: `/think` and `/no_think` typed into a user or system message.

In a multi-turn chat the latest switch wins: the latest user or system message that holds one
decides, and within a message the last switch does. A switch is a standalone token: `/thinking`,
`/think/` or a path like `docs/think/intro` is not one. The scan uses `str.rfind` (C speed, no
regex), so a 100k-token prompt costs a fraction of a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence

from tandem.chat import Message, Mode

_ROLES = frozenset({"user", "system", "developer"})
_SWITCHES = (("/no_think", Mode.NON_THINKING), ("/think", Mode.THINKING))
# A switch preceded or followed by one of these is part of a word, path or URL.
_GLUE_BEFORE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:~\\")
_GLUE_AFTER = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/\\")


def soft_switch(messages: Sequence[Message]) -> Mode | None:
    """The mode asked for by the latest soft switch, or None when no message has one."""
    for m in reversed(messages):
        if m.role in _ROLES and "/" in m.content:
            found = _last_switch(m.content)
            if found is not None:
                return found
    return None


def _last_switch(text: str) -> Mode | None:
    best_at, best = -1, None
    for word, mode in _SWITCHES:
        at = _rfind_standalone(text, word)
        if at > best_at:
            best_at, best = at, mode
    return best


def _rfind_standalone(text: str, word: str) -> int:
    end = len(text)
    while (at := text.rfind(word, 0, end)) >= 0:
        after = at + len(word)
        if (at == 0 or text[at - 1] not in _GLUE_BEFORE) and (
            after == len(text) or text[after] not in _GLUE_AFTER
        ):
            return at
        end = at
    return -1
