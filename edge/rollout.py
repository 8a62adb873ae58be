"""A model's versions changing hands: a newer version on trial as a canary beside the serving
one, its promotion or rollback, and what /v1/models shows of it.

The repository (edge/repository.py) starts a trial when a newer version has loaded while
another serves and the canary policy is on. Worker threads feed the trial (edge/pipeline.py)
and, when it reaches a verdict, `Trials.settle` publishes it on the shared board
(edge/canaryboard.py), where the first verdict of any serving process wins, and applies the
decision: promoted, the canary serves every stream and the incumbent retires; rolled back,
its streams return to the incumbent (their next frame runs there, so none is lost or answered
twice) and the version is released. Transitions take one lock; `resolve` only reads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.canary import CanaryPolicy, Trial, Verdict
from edge.canaryboard import Board, Decision
from edge.engine import LoadedModel

if TYPE_CHECKING:
    from edge.repository import VersionState, _Model

__all__ = ["Canary", "Decided", "Decision", "Trials", "Verdict"]

log = logging.getLogger("edge.rollout")


@dataclass(eq=False)
class Canary:
    """A version on trial: it serves its share of streams, `incumbent` the rest."""

    model: LoadedModel
    incumbent: LoadedModel
    trial: Trial
    state: VersionState


@dataclass(frozen=True)
class Decided:
    """A decision applied in this process; `mine` when this process took it."""

    canary: Canary
    decision: Decision
    mine: bool


class Trials:
    """Starts trials and applies decisions, under one lock, for one serving process."""

    def __init__(
        self, board: Board, index: int, decided: Callable[[Canary, Decision, bool], None]
    ) -> None:
        self._board = board
        self._index = index
        self._decided = decided
        self._lock = threading.Lock()

    def start(
        self, m: _Model, state: VersionState, incumbent: LoadedModel, policy: CanaryPolicy
    ) -> None:
        """Put the freshly loaded `state` on trial against `incumbent` (or take the decision
        the gateway already has on it)."""
        assert state.model is not None
        decided = self._board.open_trial(state.name, state.version)
        with self._lock:
            if decided is not None:
                log.info(
                    "model %s@%s: %s already (by process %d): %s",
                    state.name, state.version, decided.decision, decided.by, decided.reason,
                )  # fmt: skip
                state.canary = decided_view(decided)
                if decided.decision == "promoted":
                    serve(m, state)
                    state.state = "promoted"
                else:
                    state.state, state.model, state.reason = "rolled_back", None, decided.reason
                return
            old = m.canary
            if old is not None:
                old.state.state, old.state.model = "retired", None
                old.state.reason = f"superseded by version {state.version} before a decision"
            state.state = "canary"
            state.canary = {"policy": policy.as_dict(), "incumbent": incumbent.version}
            m.canary = Canary(state.model, incumbent, Trial(policy), state)
        log.info(
            "model %s@%s: canary on a share of %g of the streams against version %s; promoted "
            "after %d frames within limits (error rate +%g, latency p95 ratio %g, agreement "
            "%g), rolled back as soon as it fails",
            state.name, state.version, policy.share, incumbent.version, policy.frames,
            policy.max_error_rate, policy.max_latency_ratio, policy.min_agreement,
        )  # fmt: skip

    def settle(self, canary: Canary, verdict: Verdict) -> None:
        decision, mine = self._board.decide(
            canary.model.name, canary.model.version, verdict, self._index
        )
        self._apply(canary, decision, mine)

    def follow(self, canary: Canary) -> None:
        decision = self._board.decision(canary.model.name, canary.model.version)
        if decision is not None:
            self._apply(canary, decision, False)

    def _apply(self, canary: Canary, decision: Decision, mine: bool) -> None:
        with self._lock:
            if canary.state.state != "canary":
                return  # applied already, or superseded
            self._decided(canary, decision, mine)
        figures = ", ".join(f"{k} {_round(v)}" for k, v in decision.figures.items())
        who = "decided here" if mine else f"following process {decision.by}"
        (log.info if decision.decision == "promoted" else log.warning)(
            "model %s@%s: canary %s (%s) against version %s: %s [%s]",
            canary.model.name, canary.model.version, decision.decision.replace("_", " "),
            who, canary.incumbent.version, decision.reason, figures,
            extra={"model": canary.model.ref},
        )  # fmt: skip


def apply(m: _Model, canary: Canary, decision: Decision) -> None:
    """Make `decision` on `canary` the model's state (under the trials' lock)."""
    st = canary.state
    st.canary = {**(st.canary or {}), **decided_view(decision)}
    st.reason = decision.reason
    m.canary = None
    if decision.decision == "promoted":
        serve(m, st)
        st.state = "promoted"
    else:
        st.state, st.model = "rolled_back", None


def serve(m: _Model, state: VersionState) -> None:
    """`state` serves every stream from now on; the versions it replaces retire."""
    m.active = state.model
    if m.canary is not None and m.canary.state is not state:
        m.canary.state.reason = f"superseded by version {state.version} before a decision"
        m.canary = None
    state.state = "ready"
    for other in m.versions.values():
        if other is not state and other.state in ("ready", "promoted", "canary"):
            other.state, other.model = "retired", None


def decided_view(decision: Decision) -> dict[str, Any]:
    return {
        "decision": decision.decision,
        "reason": decision.reason,
        "decided_by": decision.by,
        "figures": {k: _round(v) for k, v in decision.figures.items()},
    }


def describe(view: dict[str, Any], live: Canary | None, version: str) -> dict[str, Any]:
    """A version's `canary` entry in /v1/models: its policy and incumbent, then the figures
    (live while on trial), the decision and its reason."""
    out = dict(view)
    if live is not None and live.model.version == version:
        out["figures"] = {k: _round(v) for k, v in live.trial.figures().items()}
    return out


def _round(v: float) -> float | int | None:
    if isinstance(v, int):
        return v
    if math.isnan(v):
        return None  # JSON has no NaN
    return round(v, 4)
