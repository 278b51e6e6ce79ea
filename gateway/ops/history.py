"""Routes over time, for the ops page: per-interval counts of where requests ran and how.

A ring of `intervals` buckets of `interval_seconds` each (ten minutes of 10 s buckets by
default), counting four kinds: `local_thinking`, `local_non_thinking` (answered on an edge
box, from the edges' heartbeats) and `cloud_thinking`, `cloud_non_thinking` (run on a cloud
pool, counted by this gateway as it decides each request's route).

Edges report cumulative counts (`HeartbeatRequest.routes`); the history takes the difference
from the last count it saw of that edge. The first heartbeat of an edge only sets its baseline
(what an edge answered before this gateway heard of it does not land in one interval), and a
count that went down means the edge restarted: its new count is all new. Each gateway replica
keeps its own history: its cloud counts are its own requests, its local counts every edge's
(each replica adds up the differences between the heartbeats it receives, which sum to the
edges' whole counts whichever replica they reach).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.fleet import EdgeStatus
from tandem.chat import Mode, RouteDecision

KINDS = ("local_thinking", "local_non_thinking", "cloud_thinking", "cloud_non_thinking")
_CLOUD = {Mode.THINKING: "cloud_thinking", Mode.NON_THINKING: "cloud_non_thinking"}
# Bounds what a flood of made-up edge ids can make the history remember.
MAX_EDGES = 10_000


@dataclass(slots=True)
class Interval:
    index: int  # unix time // interval length: the interval's number
    start: float  # unix time the interval began
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


class RouteHistory:
    def __init__(
        self, interval_s: float = 10.0, intervals: int = 60, clock: Callable[[], float] = time.time
    ) -> None:
        if interval_s <= 0 or intervals < 1:
            raise ValueError("interval_s must be > 0 and intervals >= 1")
        self.interval_s = interval_s
        self.intervals = intervals
        self._clock = clock
        self._ring: deque[Interval] = deque(maxlen=intervals)
        self._edges: dict[str, dict[str, int]] = {}  # edge id -> its last cumulative counts

    def _current(self) -> Interval:
        index = int(self._clock() // self.interval_s)
        if not self._ring or self._ring[-1].index < index:
            self._ring.append(Interval(index, index * self.interval_s))
        return self._ring[-1]

    def add(self, kind: str, n: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        if n > 0:
            self._current().counts[kind] += n

    def decided(self, decision: RouteDecision) -> None:
        """A request this gateway runs on a cloud pool (`GatewayService.route_listeners`): on
        every request's path, so it only counts."""
        self._current().counts[_CLOUD[decision.mode]] += 1

    def heard(self, status: EdgeStatus) -> None:
        """An edge's heartbeat, stored (`GatewayService.heartbeat_listeners`)."""
        now = {k: status.routes.get(k, 0) for k in ("local_thinking", "local_non_thinking")}
        before = self._edges.get(status.edge_id)
        if before is None and len(self._edges) >= MAX_EDGES:
            self._edges.clear()  # baselines only: the next heartbeat of each edge sets it again
        self._edges[status.edge_id] = now
        if before is None:
            return
        for kind, count in now.items():
            grew = count - before.get(kind, 0)
            self.add(kind, count if grew < 0 else grew)

    def series(self) -> list[Interval]:
        """Every interval of the window, oldest first, the current one last (empty ones too)."""
        last = self._current().index
        by_index = {i.index: i for i in self._ring}
        indexes = range(last - self.intervals + 1, last + 1)
        return [by_index.get(i) or Interval(i, i * self.interval_s) for i in indexes]
