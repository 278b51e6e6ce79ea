"""KEDA + the Horizontal Pod Autoscaler for one ScaledObject, as a pure function of time and demand.

`tandem sim fleet` feeds it one reading of the demand metric per polling interval and applies
the replica count it answers. No clock, no I/O: the tests drive it with made-up times.

What it implements, for a Prometheus trigger with `metricType: AverageValue` (the default):

- **Activation (KEDA, 0 -> N)**: at zero replicas the ScaledObject is *active* when the metric
  is above `activationThreshold` (strictly; default 0). Active at zero scales out.
- **The HPA formula (1 <-> N)**: desired = ceil(metric / threshold), clamped to
  [max(1, minReplicaCount), maxReplicaCount] (the HPA never goes below 1; zero is KEDA's).
  The HPA's tolerance (default 0.1) applies: when metric / (threshold * current) is within
  1 +- tolerance the count stays.
- **Scale-down stabilization (HPA `behavior.scaleDown.stabilizationWindowSeconds`, default
  300 s)**: a shrink goes only to the highest recommendation of the window, so a dip shorter
  than the window changes nothing. Scale-up has no window (the HPA default, 0 s).
- **Cooldown to zero (KEDA `cooldownPeriod`, default 300 s)**: with `minReplicaCount: 0`, once
  the trigger has been inactive (metric <= activationThreshold) for the cooldown since it was
  last active, the count goes to zero. The cooldown applies only to that last step; between
  1 and N the HPA's window rules.

Simplified (and said so in docs/simulators.md): KEDA's operator loop and the HPA's sync loop
(15 s) are one poll; from zero the count goes straight to the HPA's answer (KEDA scales to 1 and
the HPA, one sync later, to the formula); the HPA's scale-up/down rate policies (default:
double or +4 pods per 15 s up, any amount down) are not applied; no `fallback`,
`idleReplicaCount` or `initialCooldownPeriod`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """A ScaledObject's scaling fields, named as KEDA and the HPA name them (seconds)."""

    target: float = 1.0  # the trigger's `threshold`: metric per replica
    activation_threshold: float = 0.0  # `activationThreshold`
    min_replicas: int = 0  # `minReplicaCount`
    max_replicas: int = 5  # `maxReplicaCount`
    cooldown_seconds: float = 300.0  # `cooldownPeriod`
    scale_down_window_seconds: float = 300.0  # HPA `behavior.scaleDown.stabilizationWindowSeconds`
    tolerance: float = 0.1  # the HPA's `--horizontal-pod-autoscaler-tolerance`

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"target must be positive, got {self.target}")
        if self.activation_threshold < 0:
            raise ValueError(f"activation_threshold must be >= 0, got {self.activation_threshold}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        if self.max_replicas < 1:
            raise ValueError(f"max_replicas must be at least 1, got {self.max_replicas}")
        for name in ("cooldown_seconds", "scale_down_window_seconds", "tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The replica count after one reading, and why it is what it is."""

    replicas: int
    reason: str  # activated | scale-up | scale-down | cooldown | stabilizing | steady | idle


class Autoscaler:
    """One ScaledObject's state: the replica count, when the trigger was last active, and the
    HPA's recent recommendations (its scale-down window)."""

    def __init__(self, policy: ScalingPolicy) -> None:
        self.policy = policy
        self.replicas = policy.min_replicas
        self._last_active: float | None = None
        self._recommendations: deque[tuple[float, int]] = deque()

    def observe(self, now: float, metric: float) -> Decision:
        """The replica count given the metric read at `now` (seconds, any monotonic clock)."""
        policy = self.policy
        active = metric > policy.activation_threshold
        if active:
            self._last_active = now
        if self.replicas == 0:
            if not active:
                return Decision(0, "idle")
            return self._set(now, self._recommend(metric, current=0), "activated")
        if (
            not active
            and policy.min_replicas == 0
            and (self._last_active is None or now - self._last_active >= policy.cooldown_seconds)
        ):
            self._recommendations.clear()
            self.replicas = 0
            return Decision(0, "cooldown")
        recommendation = self._recommend(metric, current=self.replicas)
        self._recommendations.append((now, recommendation))
        while self._recommendations[0][0] < now - policy.scale_down_window_seconds:
            self._recommendations.popleft()
        if recommendation > self.replicas:
            return self._set(now, recommendation, "scale-up")
        highest = max(r for _, r in self._recommendations)
        if highest < self.replicas:
            return self._set(now, highest, "scale-down")
        return Decision(self.replicas, "stabilizing" if recommendation < self.replicas else "steady")

    def _recommend(self, metric: float, current: int) -> int:
        """The HPA's answer for an AverageValue target, within its bounds."""
        policy = self.policy
        if current > 0 and abs(metric / (policy.target * current) - 1.0) <= policy.tolerance:
            wanted = current
        else:
            wanted = math.ceil(metric / policy.target)
        return min(policy.max_replicas, max(1, policy.min_replicas, wanted))

    def _set(self, now: float, replicas: int, reason: str) -> Decision:
        if reason == "activated":
            self._recommendations = deque([(now, replicas)])
        self.replicas = replicas
        return Decision(replicas, reason)
