"""Injected faults: what a simulator should do wrong, and the per-request decisions.

`Faults` is plain configuration (settable in process with `set_faults`, or over HTTP with
`POST /_sim/faults`). `FaultInjector` turns it into per-request decisions; its error draws come
from a generator seeded by the simulator's seed, so a run with the same seed and the same
request order fails the same requests.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Faults:
    """Faults applied to the inference endpoints (chat, generate, chat completions).

    - `error_rate`: probability (0..1) that a request is answered with `error_status` before
      any work, using the engine's own error body (`error_message` replaces its text).
    - `hang`: accept the request and never answer (until the client gives up or the
      simulator stops).
    - `disconnect_after`: close the connection abruptly after this many stream chunks
      (0 = before any byte); a non-streamed request is dropped without an answer.
    - `error_after`: after this many stream chunks, send the engine's in-stream error event
      and end the stream (a non-streamed request gets an `error_status` answer).
    - `slow_start`: seconds to wait before the first byte of any answer.
    - `dead`: the engine is dead: health checks fail and every request gets the engine's
      dead-engine error.
    - `cut_after`: after this many stream chunks, end the stream as if it were complete
      (`[DONE]`) without any finish_reason, as llama-cpp-python's server cuts a running stream
      when another request arrives (vLLM simulator; a non-streamed request is not affected).
    - `reject_field`: a request whose body has this top-level field is answered with
      `reject_status` and a message naming the field as unsupported, as an engine refuses a
      feature it lacks (llama.cpp's server answers 500 to an unsupported `response_format`).
    """

    error_rate: float = 0.0
    error_status: int = 500
    error_message: str = ""
    hang: bool = False
    disconnect_after: int | None = None
    error_after: int | None = None
    cut_after: int | None = None
    slow_start: float = 0.0
    dead: bool = False
    reject_field: str | None = None
    reject_status: int = 500

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"faults.error_rate must be between 0 and 1, got {self.error_rate}")
        for name in ("error_status", "reject_status"):
            status = getattr(self, name)
            if not 400 <= status <= 599:
                raise ValueError(f"faults.{name} must be an HTTP error status, got {status}")
        for name in ("disconnect_after", "error_after", "cut_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"faults.{name} must be >= 0, got {value}")
        if self.slow_start < 0:
            raise ValueError(f"faults.slow_start must be >= 0, got {self.slow_start}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faults:
        """Builds Faults from JSON fields; unknown or mistyped fields raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"unknown fault field {key!r} (known: {', '.join(known)})")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _coerce(key, value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any) -> Any:
    if key in ("hang", "dead"):
        if not isinstance(value, bool):
            raise ValueError(f"faults.{key} must be a boolean")
        return value
    if key == "error_message":
        if not isinstance(value, str):
            raise ValueError(f"faults.{key} must be a string")
        return value
    if key == "reject_field":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"faults.{key} must be a string or null")
        return value
    if key in ("disconnect_after", "error_after", "cut_after"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"faults.{key} must be an integer or null")
        return value
    if key in ("error_status", "reject_status"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"faults.{key} must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"faults.{key} must be a number")
    return float(value)


class FaultInjector:
    """The faults in force plus a seeded generator for the per-request error draws."""

    __slots__ = ("_rng", "_seed", "faults")

    def __init__(self, faults: Faults, seed: int) -> None:
        self._seed = seed
        self.faults = faults
        self._rng = random.Random(seed)

    def set(self, faults: Faults) -> None:
        """Replaces the faults and restarts the error draws, so a test's sequence is repeatable."""
        self.faults = faults
        self._rng = random.Random(self._seed)

    def should_fail(self) -> bool:
        """Draws whether this request gets the injected error."""
        rate = self.faults.error_rate
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._rng.random() < rate

    def rejects(self, body: dict[str, Any] | None) -> str | None:
        """The field this request is refused for, if it carries the rejected one."""
        field = self.faults.reject_field
        return field if field is not None and body is not None and field in body else None
