"""The one admission path (edge.core.admission) and each wire's form of its refusals.

Guards against refusals drifting apart per transport again: a kind of refusal that some wire
cannot say, a refusal counted twice or not at all, a slot given back twice or never, and the
gateway's state checked in another order on one transport than on another."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from edge.access.ratelimit import StreamQuota
from edge.core import admission
from edge.core.admission import Admission, Kind, NotAdmitted, Refusal
from edge.core.services import Services
from edge.kserve.errors import KIND_OF, refused
from edge.metrics import Metrics
from edge.models.repository import Route, UnknownModel
from edge.settings import Settings
from edge.sharedmem import Cluster
from edge.transports.grpc.calls import GRPC_CODE
from edge.transports.http import HTTP_STATUS, refusal_response

pytestmark = pytest.mark.unit


class Repo:
    ready = True

    def assign(self, route: Route, _session: str) -> Route:
        return route

    def resolve(self, route: Route) -> Any:
        if route.name != "face":
            raise UnknownModel(f"no model {route.name!r}")
        return SimpleNamespace(ref="face@1", name="face")

    def route(self, asked: str | Route, session: str | None = None) -> Any:
        route = Route.parse(asked) if isinstance(asked, str) else asked
        return SimpleNamespace(route=route, model=self.resolve(route))


def services(max_streams: int = 1, max_fps_per_client: float = 0, **state: bool) -> Services:
    fake = SimpleNamespace(
        settings=Settings(max_streams=max_streams, max_fps_per_client=max_fps_per_client),
        cluster=Cluster.alone(max_streams),
        metrics=Metrics(),
        repo=Repo(),
        streams=StreamQuota(max_streams, kind="streams"),
        draining=False,
        saturated=False,
    )
    fake.repo.ready = state.pop("ready", True)
    fake.__dict__.update(state)
    return cast(Services, fake)


def refused_count(s: Services, transport: str, reason: str) -> float:
    value = s.metrics.registry.get_sample_value(
        "edge_streams_refused_total", {"transport": transport, "reason": reason}
    )
    return value or 0.0


def test_the_gateway_state_is_checked_in_one_order() -> None:
    """Draining wins over not ready, which wins over busy, on every transport alike."""
    everything = services(draining=True, ready=False, saturated=True)
    assert admission.gate(everything) is admission.DRAINING
    assert admission.gate(services(ready=False, saturated=True)) is admission.NOT_READY
    assert admission.gate(services(saturated=True)) is admission.BUSY
    assert admission.gate(services()) is None


def test_every_wire_can_say_every_kind_of_refusal() -> None:
    assert set(HTTP_STATUS) == set(GRPC_CODE) == set(KIND_OF) == set(Kind)


def test_http_form_has_status_body_and_retry_after_only_when_waiting_helps() -> None:
    busy = refusal_response(admission.BUSY)
    assert busy.status == 503 and busy.headers["Retry-After"] == "1"
    assert json.loads(cast(bytes, busy.body)) == {
        "error": "busy",
        "message": "this gateway process is behind; retry",
    }
    missing = refusal_response(admission.unknown_model(UnknownModel("no model 'x'")))
    assert missing.status == 404 and "Retry-After" not in missing.headers
    assert GRPC_CODE[Kind.EXHAUSTED] == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = refused(Refusal("max_streams", "full"))
    assert (error.http_status, error.message) == (503, "max_streams: full")


def test_a_stream_admission_counts_each_refusal_once_and_gives_slots_back_once() -> None:
    s = services(max_streams=1)
    first = Admission(s, "websocket")
    assert first.check_model("face") == Route("face")
    first.take_stream_slot()
    with pytest.raises(NotAdmitted) as e, Admission(s, "grpc") as second:
        second.take_stream_slot()
    assert e.value.refusal.reason == "max_streams"
    assert refused_count(s, "grpc", "max_streams") == 1
    with pytest.raises(NotAdmitted) as e:
        Admission(s, "webrtc").check_model("nose")
    assert e.value.refusal.kind is Kind.NOT_FOUND
    assert refused_count(s, "webrtc", "unknown_model") == 1
    first.release()
    first.release()  # once only: must not free a slot another stream holds
    with Admission(s, "grpc") as third:
        third.take_stream_slot()
        assert s.streams.open("*") == 1
    assert s.streams.open("*") == 0


def test_unary_requests_are_gated_alike_on_every_transport() -> None:
    """A draining gateway refuses a unary request on every transport, and the refusal does
    not count as a refused stream."""
    s = services(draining=True)
    for transport in ("grpc", "kserve-grpc", "http", "kserve"):
        with pytest.raises(NotAdmitted) as e:
            admission.admit_request(s, transport, "127.0.0.1")
        assert e.value.refusal is admission.DRAINING
    assert refused_count(s, "grpc", "draining") == 0
    with pytest.raises(NotAdmitted) as e:
        admission.request_route(s, "nose")
    assert e.value.refusal.reason == "unknown_model"


def test_a_unary_request_holds_its_client_until_it_ends() -> None:
    """Within the budget a request is let in and holds its client's row (so concurrent
    requests share one bucket); over it, refused rate_limited (EXHAUSTED), counted as a
    client-limited frame; the row goes when the last request ends."""
    s = services(max_fps_per_client=2)
    shared = s.cluster.shared
    holds = [admission.admit_request(s, "kserve", "10.0.0.1") for _ in range(2)]
    with pytest.raises(NotAdmitted) as e:
        admission.admit_request(s, "kserve", "10.0.0.1")
    assert e.value.refusal is admission.RATE_LIMITED and e.value.refusal.kind is Kind.EXHAUSTED
    assert shared.count("client:10.0.0.1") == 2
    other = admission.admit_request(s, "grpc", "10.0.0.2")  # another client has its own
    for hold in [*holds, other]:
        with hold:
            pass
    assert shared.count("client:10.0.0.1") == 0
    s.metrics.flush()  # the per-frame counts gather until a flush (edge/metrics/buffer.py)
    sample = s.metrics.registry.get_sample_value(
        "edge_frames_rate_limited_total", {"transport": "kserve", "limit": "client"}
    )
    assert sample == 1
