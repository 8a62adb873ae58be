"""A model's versions changing hands: a newer version on trial as a canary beside the serving
one, its promotion or rollback, and what /v1/models shows of it.

The repository (edge/models/repository.py) starts a trial when a newer version has loaded while
another serves and the canary policy is on. Worker threads feed the trial (edge/core/pipeline.py)
and, when it reaches a verdict, `Trials.settle` publishes it on the shared board
(edge/models/canary/board.py), where the first verdict of any serving process wins, and applies the
decision: promoted, the canary serves every stream and the incumbent retires; rolled back,
its streams return to the incumbent (their next frame runs there, so none is lost or answered
twice) and the version is released. Transitions take one lock (the event loop starts trials
and swaps versions, a worker applies a verdict); `resolve` only reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.inference.engine import LoadedModel
from edge.models.canary.board import Board, Decision
from edge.models.canary.trial import CanaryPolicy, Trial, Verdict
from edge.models.versions import ModelVersions, VersionState, json_number

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
        self, m: ModelVersions, state: VersionState, incumbent: LoadedModel, policy: CanaryPolicy
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

    def serve(self, m: ModelVersions, state: VersionState) -> None:
        """`state` replaces the serving version at once (no trial; or a process that starts
        after the gateway promoted it)."""
        decided = self._board.decision(state.name, state.version)
        with self._lock:
            serve(m, state)
            if decided is not None and decided.decision == "promoted":
                state.state, state.canary = "promoted", decided_view(decided)

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
        figures = ", ".join(f"{k} {json_number(v)}" for k, v in decision.figures.items())
        who = "decided here" if mine else f"following process {decision.by}"
        (log.info if decision.decision == "promoted" else log.warning)(
            "model %s@%s: canary %s (%s) against version %s: %s [%s]",
            canary.model.name, canary.model.version, decision.decision.replace("_", " "),
            who, canary.incumbent.version, decision.reason, figures,
            extra={"model": canary.model.ref},
        )  # fmt: skip


def apply(m: ModelVersions, canary: Canary, decision: Decision) -> None:
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


def serve(m: ModelVersions, state: VersionState) -> None:
    """`state` serves every stream from now on; the versions it replaces retire."""
    m.active = state.model
    if m.canary is not None and m.canary.state is not state:
        m.canary.state.reason = f"superseded by version {state.version} before a decision"
        m.canary = None
    state.state = "ready"
    for other in list(m.versions.values()):  # the loop may add a version meanwhile
        if other is not state and other.state in ("ready", "promoted", "canary"):
            other.state, other.model = "retired", None


def decided_view(decision: Decision) -> dict[str, Any]:
    return {
        "decision": decision.decision,
        "reason": decision.reason,
        "decided_by": decision.by,
        "figures": {k: json_number(v) for k, v in decision.figures.items()},
    }


def not_to_serve(board: Board, m: ModelVersions, versions: list[str], fresh: bool) -> set[str]:
    """Which of `versions` not to serve: rolled back here or by another process, unless an
    operator asked since for them to be tried again (`fresh`: this process has just met the
    model, so the retries asked before are not for it)."""
    retries = board.retries(m.name)
    if fresh:
        m.retries_seen = retries
    elif retries > m.retries_seen:  # POST /v1/models/{name}/load {"retry": true}
        m.retries_seen = retries
        on_board = board.rolled_back(m.name, versions)
        for v in [v for v in m.versions.values() if v.state == "rolled_back"]:
            if v.version not in on_board:
                log.info("model %s@%s: tried again, as an operator asked", m.name, v.version)
                del m.versions[v.version]
    local = {v.version for v in m.versions.values() if v.state == "rolled_back"}
    return local | board.rolled_back(m.name, versions)


def mark_rolled_back(board: Board, m: ModelVersions, version: str, sig: tuple[int, int]) -> None:
    """A version the gateway rolled back, met by this process before it loads it."""
    if (old := m.versions.get(version)) is not None and old.state == "rolled_back":
        return
    decision = board.decision(m.name, version)
    m.versions[version] = VersionState(
        m.name, version, "rolled_back", decision.reason if decision else "rolled back", sig,
        canary=decided_view(decision) if decision else None,
    )  # fmt: skip
