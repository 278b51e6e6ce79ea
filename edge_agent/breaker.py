"""The circuit breaker over the uplink: is the gateway reachable right now?

Two signals feed it. Forwarded requests report link failures (refused, reset, deadline) and
successes, as in any breaker. And an active probe (the gateway's gRPC health Check with a
short deadline, every `probe_interval`) catches what requests alone cannot: a blackholed WAN
where nothing fails, everything just waits. So a cut link is noticed within about
`probe_interval + probe_timeout` seconds even with no traffic, and the first request after it
does not have to discover it the slow way.

States: CLOSED (forward), OPEN (do not forward: the edge's policy applies), HALF_OPEN (the
probe has seen the gateway again; requests flow, and `successes_to_close` successes in a row
close it, any failure opens it again). The probe keeps running in every state, so recovery
needs no trial request.

Hand-written rather than taken from a library (pybreaker, aiobreaker, purgatory): those wrap
calls and count their exceptions, while here the state drives a routing decision before any
call, the strongest signal is an active probe they have no notion of, and opening must cut
calls already in flight (`on_open`). What remains is a small state machine.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable

from tandem.logs import get_logger

log = get_logger("tandem.edge.breaker")


class State(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitBreaker:
    """Counts link failures and successes (of requests and probes) and decides the state."""

    def __init__(
        self,
        *,
        failures_to_open: int,
        probe_failures_to_open: int,
        successes_to_close: int,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.probe_failures_to_open = probe_failures_to_open
        self.successes_to_close = successes_to_close
        self._on_change = on_change
        self.state = State.CLOSED
        self.last_error = ""
        self._failures = 0
        self._probe_failures = 0
        self._successes = 0
        self._changed = asyncio.Event()

    @property
    def allows(self) -> bool:
        """Whether requests may be forwarded now."""
        return self.state is not State.OPEN

    def succeeded(self) -> None:
        """A request or probe reached the gateway and got its answer."""
        self._failures = self._probe_failures = 0
        if self.state is State.OPEN:
            self._successes = 1
            self._set(State.HALF_OPEN)
        else:
            self._successes += 1
        if self.state is State.HALF_OPEN and self._successes >= self.successes_to_close:
            self._set(State.CLOSED)

    def request_failed(self, error: str) -> None:
        """A forwarded request failed on the link (not an error answer from the gateway)."""
        self._failures += 1
        self._failed(error, self._failures >= self.failures_to_open)

    def probe_failed(self, error: str) -> None:
        self._probe_failures += 1
        self._failed(error, self._probe_failures >= self.probe_failures_to_open)

    def _failed(self, error: str, enough: bool) -> None:
        self.last_error = error
        self._successes = 0
        # Half-open is a trial: one failure is enough to open again.
        if self.state is State.HALF_OPEN or (self.state is State.CLOSED and enough):
            self._set(State.OPEN)

    def _set(self, state: State) -> None:
        if state is self.state:
            return
        previous, self.state = self.state, state
        if state is State.OPEN:
            log.warning("uplink_breaker", state=state.value, previous=previous.value, error=self.last_error)
        else:
            log.info("uplink_breaker", state=state.value, previous=previous.value)
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(state)

    async def changed(self) -> State:
        """Waits for the next state change (for tests and monitors)."""
        await self._changed.wait()
        return self.state

    async def watch(self, probe: Callable[[], Awaitable[None]], *, interval: float, deadline: float) -> None:
        """Probes forever: `probe()` returning is a success; raising or overrunning `deadline`
        is a failure. Run it as a task; cancel it to stop."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the cancellation
                # that stops this loop when it lands as the probe finishes.
                async with asyncio.timeout(deadline):
                    await probe()
            except TimeoutError:
                self.probe_failed(f"health probe: no answer within {deadline:g}s")
            except Exception as exc:
                self.probe_failed(f"health probe: {type(exc).__name__}: {exc}")
            else:
                self.succeeded()
            # A fixed period from the start of each probe, so detection time stays bounded.
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
