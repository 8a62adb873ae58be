"""The canaries of one serving process, as one unit: the entry point the repository and the
pipeline call.

The repository hands it each version that loads (`arrived`): a newer one than the version
serving goes on trial, when its policy (edge/inference/canarypolicy.py) says so. It routes a
stream's share to the canary (`serving`). The pipeline hands it each batch's outcome
(`judge`): the trial's figures (edge/models/canary/trial.py) and the canary metrics follow, and
a verdict goes on the board every process shares (edge/models/canary/board.py), where the first
process's verdict wins. A decision reaches the model's versions by one path, `_apply` then
`_announce`: the transition (edge/models/canary/rollout.py), the model_ready gauges, and, when
this process took it, its count and a rescan of every process (the supervisor has each rescan,
and a rescan follows the board). Transitions take one lock (the event loop starts trials and
swaps versions, a worker applies a verdict); routing only reads.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from edge.inference.canarypolicy import CanaryPolicy
from edge.inference.engine import LoadedModel
from edge.metrics import Metrics
from edge.models.canary import rollout
from edge.models.canary.board import Board, Decision
from edge.models.canary.rollout import Canary
from edge.models.canary.trial import Verdict
from edge.models.versions import Live, ModelVersions, VersionState, json_number, version_key
from edge.sharedmem import Cluster

log = logging.getLogger("edge.rollout")

#: runs a canary's batch on its incumbent too: what that run cost and, per frame the canary
#: answered, how far the two agree (edge.models.shadow.second_opinion)
Rerun = Callable[[LoadedModel], tuple[float, list[float]]]


class Canaries:
    """Every canary trial of one serving process and the decisions on them."""

    def __init__(self, cluster: Cluster, metrics: Metrics, *, enabled: bool = True) -> None:
        self._cluster = cluster
        self._metrics = metrics
        self._enabled = enabled  # settings.canary; off, a newer version replaces at once
        self._board = Board(cluster.shared)
        self._lock = threading.Lock()
        self._live: dict[str, Canary] = {}  # by model name: the version on trial

    # -- routing (worker threads and the event loop: reads only) ------------------------------
    def serving(self, name: str, bucket: float) -> LoadedModel | None:
        """The canary of model `name` for a stream at `bucket`, if that is in its share."""
        canary = self._live.get(name)
        if canary is not None and bucket < canary.trial.policy.share:
            return canary.model
        return None

    def live(self) -> Live:
        """The figures of every version on trial now, for /v1/models."""
        return {
            (c.model.name, c.model.version): c.trial.figures() for c in list(self._live.values())
        }

    # -- versions arriving (event loop) --------------------------------------------------------
    def arrived(self, m: ModelVersions, state: VersionState) -> bool:
        """A version of `m` (a model without a traffic split) has loaded: newer than the one
        serving, it goes on trial when the policy says so, else it serves at once (an older
        one only loads). True when it went on trial."""
        assert m.spec is not None and state.model is not None
        current = m.active
        policy = self._board.policy(m.name, m.spec.canary)
        newer = current is not None and version_key(state.version) > version_key(current.version)
        if current is not None and newer and policy.enabled and self._enabled:
            self._start(m, state, current, policy)
            return True
        if current is None or version_key(state.version) >= version_key(current.version):
            self._serve(m, state)
        return False

    def _start(
        self, m: ModelVersions, state: VersionState, incumbent: LoadedModel, policy: CanaryPolicy
    ) -> None:
        """Put `state` on trial against `incumbent` (or take the decision the gateway already
        has on it)."""
        decided = self._board.open_trial(state.name, state.version)
        with self._lock:
            if decided is not None:
                log.info(
                    "model %s@%s: %s already (by process %d): %s",
                    state.name, state.version, decided.decision, decided.by, decided.reason,
                )  # fmt: skip
                rollout.take_decided(m, state, decided)
                self._forget_settled(m)
                return
            self._live[m.name] = rollout.start(m, state, incumbent, policy)
        log.info(
            "model %s@%s: canary on a share of %g of the streams against version %s; promoted "
            "after %d frames within limits (error rate +%g, latency p95 ratio %g, agreement "
            "%g), rolled back as soon as it fails; no verdict before %d streams of %d clients "
            "over %g s",
            state.name, state.version, policy.share, incumbent.version, policy.frames,
            policy.max_error_rate, policy.max_latency_ratio, policy.min_agreement,
            policy.min_streams, policy.min_clients, policy.min_seconds,
        )  # fmt: skip

    def _serve(self, m: ModelVersions, state: VersionState) -> None:
        """`state` replaces the serving version at once (no trial; or a process that starts
        after the gateway promoted it)."""
        decided = self._board.decision(state.name, state.version)
        with self._lock:
            rollout.serve(m, state)
            if decided is not None and decided.decision == "promoted":
                state.state, state.canary = "promoted", rollout.decided_view(decided)
            self._forget_settled(m)

    def _forget_settled(self, m: ModelVersions) -> None:
        """Drop `m`'s trial once a transition retired it (under the lock)."""
        canary = self._live.get(m.name)
        if canary is not None and canary.state.state != "canary":
            del self._live[m.name]

    def rescan(self, m: ModelVersions, versions: list[str], fresh: bool) -> set[str]:
        """Before a rescan of `m` loads anything: apply a decision another process took on its
        trial meanwhile; which of `versions` not to serve (rollout.not_to_serve)."""
        canary = self._live.get(m.name)
        if canary is not None:
            self._follow(canary)
        return rollout.not_to_serve(self._board, m, versions, fresh)

    def mark_rolled_back(self, m: ModelVersions, version: str, sig: tuple[int, int]) -> None:
        rollout.mark_rolled_back(self._board, m, version, sig)

    def on_trial(self, name: str, version: str) -> bool:
        """Whether any process has `version` of `name` on trial."""
        return self._board.on_trial(name, version)

    # -- the operator (POST /v1/models/{name}/load) --------------------------------------------
    def set_policy(self, name: str, policy: dict[str, Any]) -> None:
        self._board.set_policy(name, policy)

    def retry(self, name: str, version: str | None = None) -> None:
        self._board.retry(name, version)

    # -- each batch (worker threads) -----------------------------------------------------------
    def judge(
        self,
        model: LoadedModel,
        payloads: list[dict[str, Any] | None],
        cost_s: float | None,
        rerun: Rerun,
        sources: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Feed the trial `model` takes part in, if any, one batch: `payloads`, each judged
        frame's result (None: answered with an error); `cost_s`, what the batch's run cost
        (`LoadedModel.run_costed`; None: it failed); `sources`, each judged frame's (stream
        id, client address). The incumbent's batches count its errors;
        a canary's batch is run on the incumbent too (`rerun`), for latency and agreement. A
        verdict is published and applied; else a decision another process took is followed."""
        canary = self._trial_of(model)
        n, errors = len(payloads), payloads.count(None)
        if canary is None or n == 0:
            return
        if model is canary.incumbent:
            canary.trial.incumbent_batch(n, errors)
            return
        agreements: list[float] = []
        seconds = None
        if cost_s is not None and errors < n:
            try:
                incumbent_s, agreements = rerun(canary.incumbent)
                seconds = (cost_s / n, incumbent_s / n)
            except Exception as e:
                log.warning(
                    "canary %s: incumbent %s failed: %s", model.ref, canary.incumbent.ref, e
                )
        verdict = canary.trial.canary_batch(n, errors, agreements, seconds, sources)
        self._show(canary)
        if verdict is not None:
            self._decide(canary, verdict)
        else:
            self._follow(canary)  # another process may have decided

    def _trial_of(self, model: LoadedModel) -> Canary | None:
        """The trial `model` takes part in, as the canary or as its incumbent."""
        canary = self._live.get(model.name)
        if canary is not None and (model is canary.model or model is canary.incumbent):
            return canary
        return None

    def _show(self, canary: Canary) -> None:
        f = canary.trial.figures()
        m, labels = self._metrics, (canary.model.name, canary.model.version)
        m.canary_frames.labels(*labels).set(f["frames"])
        m.canary_error_rate.labels(*labels).set(f["error_rate"])
        m.canary_latency_ratio.labels(*labels).set(f["latency_ratio"])
        m.canary_agreement.labels(*labels).set(f["agreement"])

    # -- decisions -----------------------------------------------------------------------------
    def _decide(self, canary: Canary, verdict: Verdict) -> None:
        """Publish this process's `verdict` (or take the decision another published first)."""
        model = canary.model
        by = self._cluster.index
        decision, mine = self._board.decide(model.name, model.version, verdict, by)
        self._apply(canary, decision, mine)

    def _follow(self, canary: Canary) -> None:
        decision = self._board.decision(canary.model.name, canary.model.version)
        if decision is not None:
            self._apply(canary, decision, False)

    def _apply(self, canary: Canary, decision: Decision, mine: bool) -> None:
        name = canary.model.name
        with self._lock:
            if canary.state.state != "canary" or self._live.get(name) is not canary:
                return  # applied already, or superseded
            del self._live[name]
            rollout.apply(canary, decision)
        figures = ", ".join(f"{k} {json_number(v)}" for k, v in decision.figures.items())
        who = "decided here" if mine else f"following process {decision.by}"
        (log.info if decision.decision == "promoted" else log.warning)(
            "model %s@%s: canary %s (%s) against version %s: %s [%s]",
            name, canary.model.version, decision.decision.replace("_", " "),
            who, canary.incumbent.version, decision.reason, figures,
            extra={"model": canary.model.ref},
        )  # fmt: skip
        self._announce(canary, decision, mine)

    def _announce(self, canary: Canary, decision: Decision, mine: bool) -> None:
        """What a decision applied here means beyond the model's versions: model_ready follows
        the version that serves; a decision this process took is counted, and every other
        process rescans now (through the supervisor) rather than at its next canary batch."""
        name, m = canary.model.name, self._metrics
        if decision.decision == "promoted":
            m.model_ready.labels(name, canary.model.version).set(1.0)
            m.model_ready.labels(name, canary.incumbent.version).set(0.0)
        if not mine:
            return
        m.canary_decisions.labels(name, canary.model.version, decision.decision).inc()
        if self._cluster.supervisor_pid:
            os.kill(self._cluster.supervisor_pid, signal.SIGUSR1)  # it sends each one SIGHUP
