"""The canary's verdict from its figures, its settings, and the board every process follows."""

from __future__ import annotations

import math

import pytest

from edge.inference.canarypolicy import CanaryPolicy, CanaryPolicyError
from edge.inference.modelspec import ModelSpec, ModelSpecError
from edge.models.canary.board import Board
from edge.models.canary.trial import Trial, Verdict
from edge.sharedmem import Shared

pytestmark = pytest.mark.unit

#: no minimum of streams, clients or time: the figures alone decide
NOW = {"min_streams": 1, "min_clients": 1, "min_seconds": 0.0}
POLICY = CanaryPolicy(
    frames=100, max_error_rate=0.02, max_latency_ratio=1.5, min_agreement=0.8, **NOW
)
#: one stream of one client
ONE = [("s1", "10.0.0.1")]


def feed(
    trial: Trial, frames: int, sources: list[tuple[str, str]] = ONE, **batch: object
) -> Verdict | None:
    """Feed `frames` one-frame batches from `sources`; the verdict when one is reached."""
    for _ in range(frames):
        verdict = trial.canary_batch(1, sources=sources, **batch)  # type: ignore[arg-type]
        if verdict is not None:
            return verdict
    return None


def test_a_sound_canary_is_promoted_after_its_budget_and_not_before() -> None:
    """Guards against promoting early, and against noise within the limits failing it."""
    trial = Trial(POLICY)
    noisy = [(0.0011, 0.001), (0.001, 0.0012)] * 49
    for canary_s, incumbent_s in noisy:
        assert trial.canary_batch(1, 0, [1.0], (canary_s, incumbent_s), ONE) is None
    verdict = feed(trial, 5, errors=0, agreements=[0.9], seconds=(0.001, 0.001))
    assert verdict is not None and verdict.decision == "promoted"
    assert verdict.figures["frames"] == 100 and trial.served == 100
    assert trial.canary_batch(1, 0, [1.0], (0.001, 0.001), ONE) is None  # only the first


def test_errors_roll_back_as_soon_as_the_budget_cannot_absorb_them() -> None:
    """2% of 100 frames is 2 errors: the third fails the trial, whatever comes after."""
    trial = Trial(POLICY)
    assert feed(trial, 2, errors=1) is None
    verdict = trial.canary_batch(1, 1, sources=ONE)
    assert verdict is not None and verdict.decision == "rolled_back"
    assert "errors: 3 of 3" in verdict.reason and trial.served == 3


def test_the_incumbents_own_errors_raise_the_allowance() -> None:
    """Guards against blaming the canary for traffic the incumbent fails on just as well."""
    trial = Trial(POLICY)
    trial.incumbent_batch(100, 10)  # the incumbent fails 10% of its frames
    assert feed(trial, 10, errors=1) is None  # 10 of 10 is within (0.02 + 0.10) x 100
    verdict = feed(trial, 5, errors=1)
    assert verdict is not None and "incumbent 10.0%" in verdict.reason


def test_disagreement_rolls_back_once_the_mean_cannot_reach_the_minimum() -> None:
    """20 frames of disagreement are all that (1 - 0.8) x 100 allows: the 21st decides."""
    trial = Trial(POLICY)
    assert feed(trial, 20, errors=0, agreements=[0.0], seconds=(0.001, 0.001)) is None
    verdict = trial.canary_batch(1, 0, [0.0], (0.001, 0.001), ONE)
    assert verdict is not None and verdict.decision == "rolled_back"
    assert verdict.reason.startswith("agreement") and trial.served == 21


def test_a_slow_canary_is_rolled_back_after_a_quarter_of_the_budget() -> None:
    trial = Trial(POLICY)
    assert feed(trial, 24, errors=0, agreements=[1.0], seconds=(0.003, 0.001)) is None
    verdict = trial.canary_batch(1, 0, [1.0], (0.003, 0.001), ONE)
    assert verdict is not None and verdict.reason.startswith("latency")
    assert verdict.figures["latency_p50_ratio"] == pytest.approx(3.0)


def test_a_slow_tail_alone_fails_at_the_end_of_the_budget() -> None:
    """A median within the limit does not decide early; a p95 over it fails the budget."""
    trial = Trial(POLICY)
    fast, slow = (0.001, 0.001), (0.004, 0.001)
    assert feed(trial, 90, errors=0, agreements=[1.0], seconds=fast) is None
    verdict = feed(trial, 10, errors=0, agreements=[1.0], seconds=slow)
    assert verdict is not None and verdict.decision == "rolled_back"
    assert verdict.reason.startswith("latency") and trial.served == 100
    assert verdict.figures["latency_ratio"] > 1.5 >= verdict.figures["latency_p50_ratio"]


def test_nothing_compared_is_not_a_pass() -> None:
    """A budget spent without one frame compared (the incumbent failed every time) is no
    evidence that the canary is sound."""
    trial = Trial(CanaryPolicy(frames=10, **NOW))
    verdict = feed(trial, 10, errors=0)
    assert verdict is not None and verdict.decision == "rolled_back"
    assert math.isnan(verdict.figures["agreement"])


def test_policy_values_are_checked_with_a_way_to_fix_them() -> None:
    base = CanaryPolicy()
    assert base.updated({"share": 1, "frames": 50}, "x").share == 1.0
    for bad, word in (
        ({"share": 0}, "share"),
        ({"share": 1.5}, "share"),
        ({"frames": 0}, "frames"),
        ({"frames": 2.5}, "frames"),
        ({"max_latency_ratio": 0.5}, "max_latency_ratio"),
        ({"min_agreement": 2}, "between 0 and 1"),
        ({"enabled": "yes"}, "true or false"),
        ({"min_streams": 0}, "min_streams must be an integer between 1 and 1000"),
        ({"min_clients": 1001}, "min_clients"),
        ({"min_clients": 1.5}, "min_clients"),
        ({"min_seconds": -1}, "min_seconds must be between 0 and 86400"),
        ({"percent": 5}, "unknown keys"),
    ):
        with pytest.raises(CanaryPolicyError, match=word):
            base.updated(bad, "x")
    spec = {"task": "blazeface", "input": [128, 128]}
    assert ModelSpec.from_dict("m", {**spec, "canary": {"frames": 9}}).canary.frames == 9
    with pytest.raises(ModelSpecError, match=r"\[canary\]: unknown keys"):
        ModelSpec.from_dict("m", {**spec, "canary": {"budget": 9}})


def test_the_board_keeps_the_first_decision_for_every_process() -> None:
    """Guards against two processes deciding differently: the second verdict is answered
    with the first one's decision, and a process that joins later reads it."""
    shared = Shared(2, 16)
    first, second = Board(shared), Board(shared.attach(1))
    assert first.open_trial("m", "2") is None and second.open_trial("m", "2") is None
    assert first.on_trial("m", "2")
    failed = Verdict("rolled_back", "errors: 3 of 3", {"frames": 3.0})
    decision, mine = first.decide("m", "2", failed, 0)
    assert mine and decision.decision == "rolled_back"
    passed = Verdict("promoted", "fine", {"frames": 100.0})
    decision, mine = second.decide("m", "2", passed, 1)
    assert not mine and decision.decision == "rolled_back" and decision.by == 0
    later = second.open_trial("m", "2")
    assert later is not None and later.reason == "errors: 3 of 3"
    assert second.rolled_back("m", ["1", "2"]) == {"2"}
    second.retry("m")
    assert first.rolled_back("m", ["2"]) == set() and first.retries("m") == 1
    second.set_policy("m", {"share": 1.0, "min_clients": 3, "min_seconds": 1.5})
    policy = first.policy("m", CanaryPolicy(frames=7))
    assert policy == CanaryPolicy(share=1.0, frames=7, min_clients=3, min_seconds=1.5)
    assert isinstance(policy.min_clients, int)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_verdict_before_enough_streams_clients_and_time() -> None:
    """Guards against one client deciding a trial (issue #23): under the default minimums (3
    streams, 2 clients, 60 s), frames from streams of one client, past the budget and past
    the time, keep the trial open, failures included; a third stream from a second client
    then decides it, on every frame judged."""
    assert (CanaryPolicy().min_streams, CanaryPolicy().min_clients) == (3, 2)
    clock = Clock()
    trial = Trial(CanaryPolicy(frames=100), clock)
    one_client = [("s1", "10.0.0.1"), ("s2", "10.0.0.1")]
    assert feed(trial, 150, one_client, errors=1) is None  # 150 errors: no verdict yet
    clock.now += 60
    assert feed(trial, 150, one_client, errors=1) is None
    figures = trial.figures()
    assert (figures["streams"], figures["clients"], figures["frames"]) == (2, 1, 300)
    verdict = trial.canary_batch(1, 1, sources=[("s3", "10.0.0.2")])
    assert verdict is not None and verdict.decision == "rolled_back"
    assert verdict.reason.startswith("errors") and verdict.figures["clients"] == 2


def test_the_time_minimum_holds_and_waiting_is_not_failing() -> None:
    """Guards against a burst deciding before `min_seconds`, and against the frames that
    came while the trial waited counting against the budget: 1% errors over three times the
    budget is within 2%, and is promoted once the time has passed."""
    clock = Clock()
    trial = Trial(CanaryPolicy(frames=100, min_seconds=60.0), clock)
    sources = [("s1", "10.0.0.1"), ("s2", "10.0.0.2"), ("s3", "10.0.0.3")]
    batch = {"agreements": [1.0], "seconds": (0.001, 0.001)}
    for _ in range(3):
        assert feed(trial, 99, sources, errors=0, **batch) is None
        assert feed(trial, 1, sources, errors=1, **batch) is None
    clock.now += 59.0
    assert feed(trial, 1, sources, errors=0, **batch) is None
    clock.now += 1.0
    verdict = feed(trial, 1, sources, errors=0, **batch)
    assert verdict is not None and verdict.decision == "promoted", verdict
    assert "from 3 streams of 3 clients over 60 s" in verdict.reason
