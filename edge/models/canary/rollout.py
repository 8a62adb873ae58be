"""A model's versions changing hands: a newer version put on trial as a canary beside the
serving one, its promotion or rollback, and what /v1/models keeps of it.

Functions on one model's versions (edge/models/versions.py), each called by
edge/models/canary/canaries.py under its lock: promoted, the canary serves every stream and
the incumbent retires; rolled back, its streams return to the incumbent (their next frame runs
there, so none is lost or answered twice) and the version is released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edge.inference.canarypolicy import CanaryPolicy
from edge.inference.engine import LoadedModel
from edge.models.canary.board import Board, Decision
from edge.models.canary.trial import Trial
from edge.models.versions import ModelVersions, VersionState, json_number

log = logging.getLogger("edge.rollout")


@dataclass(eq=False)
class Canary:
    """A version on trial: it serves its share of streams, `incumbent` the rest."""

    model: LoadedModel
    incumbent: LoadedModel
    trial: Trial
    state: VersionState
    versions: ModelVersions  # the model whose versions it changes


def start(
    m: ModelVersions, state: VersionState, incumbent: LoadedModel, policy: CanaryPolicy
) -> Canary:
    """Put the freshly loaded `state` on trial against `incumbent`; a trial it supersedes
    retires undecided."""
    assert state.model is not None
    for other in list(m.versions.values()):
        if other is not state and other.state == "canary":
            _supersede(other, state)
    state.state = "canary"
    state.canary = {"policy": policy.as_dict(), "incumbent": incumbent.version}
    return Canary(state.model, incumbent, Trial(policy), state, m)


def take_decided(m: ModelVersions, state: VersionState, decision: Decision) -> None:
    """`state` has loaded after the gateway decided on it: serve it, or release it."""
    state.canary = decided_view(decision)
    if decision.decision == "promoted":
        serve(m, state)
        state.state = "promoted"
    else:
        state.state, state.model, state.reason = "rolled_back", None, decision.reason


def apply(canary: Canary, decision: Decision) -> None:
    """Make `decision` on `canary` its model's state."""
    st = canary.state
    st.canary = {**(st.canary or {}), **decided_view(decision)}
    st.reason = decision.reason
    if decision.decision == "promoted":
        serve(canary.versions, st)
        st.state = "promoted"
    else:
        st.state, st.model = "rolled_back", None


def serve(m: ModelVersions, state: VersionState) -> None:
    """`state` serves every stream from now on; the versions it replaces retire, a canary on
    trial among them."""
    m.active = state.model
    state.state = "ready"
    for other in list(m.versions.values()):  # the loop may add a version meanwhile
        if other is not state and other.state == "canary":
            _supersede(other, state)
        elif other is not state and other.state in ("ready", "promoted"):
            other.state, other.model = "retired", None


def _supersede(trial: VersionState, by: VersionState) -> None:
    trial.state, trial.model = "retired", None
    trial.reason = f"superseded by version {by.version} before a decision"


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
