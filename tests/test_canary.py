"""Canary rollout as an operator drives it: a new version directory dropped into the model
repository while streams run enters as a canary on a share of the streams, is compared with
the version it would replace, and is promoted or rolled back (docs/models.md, "Canary
rollout"); every frame of the running streams is answered exactly once throughout."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.core.services import SERVICES
from edge.models.repository import Route
from tests import canary_models
from tests.conftest import running, settings_for
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, wait_until
from tests.test_models import add_version, face_repo_copy, models_rows
from tests.test_processes import Spawn, fresh, start, streams_on_both
from tests.wsclient import Books, next_reply, open_stream, read_into

pytestmark = pytest.mark.integration

#: canary frames before a promotion; the bad versions must be rolled back within it
BUDGET = 120
#: generous against noise: a copy of the model measures about 1, the slowed one 3 or more
LATENCY_LIMIT = 2.0
CANARY = f"""share = 0.5
frames = {BUDGET}
max_error_rate = 0.02
max_latency_ratio = {LATENCY_LIMIT}
min_agreement = 0.9
"""
#: no minimum of streams, clients or time before a verdict: these trials test the figures,
#: from one client (tests/test_canary_steer.py tests the minimums)
NO_MINIMUMS = "min_streams = 1\nmin_clients = 1\nmin_seconds = 0\n"
STREAMS = 4
FPS = 40.0


@dataclass
class Outcome:
    row: dict[str, Any]
    rows: dict[str, dict[str, Any]]
    metrics: dict[tuple[str, tuple], float]
    books: list[Books] = field(default_factory=list)

    def refs(self, books: Books) -> list[str]:
        """What answered each frame of a stream, in seq order: name@version, or `error`."""
        out = []
        for _, msgs in sorted(books.replies.items()):
            m = msgs[0]
            if m["type"] == "result":
                out.append(m["model"])
            elif m["type"] == "error":
                out.append("error")
        return out


async def _decided(
    http: aiohttp.ClientSession, url: str, within: float, version: str = "2"
) -> dict[str, Any]:
    """The version's row once its trial is decided."""
    rows: dict[str, dict[str, Any]] = {}

    async def decided() -> bool:
        rows.update({str(r["version"]): r for r in await models_rows(http, url)})
        return rows.get(version, {}).get("state") in ("promoted", "rolled_back")

    await wait_until(decided, within, lambda: f"version {version} decided: {rows.get(version)}")
    return rows[version]


def canary_repo(pulled: Path, root: Path, canary: str = "", minimums: str = NO_MINIMUMS) -> Path:
    """A repository with version 1 whose model.toml's [canary] has `canary` and `minimums`
    (by default, none)."""
    repo = face_repo_copy(pulled, root)
    toml = repo / "blazeface" / "model.toml"
    toml.write_text(toml.read_text() + "\n[canary]\n" + canary + minimums)
    return repo


async def trial(pulled: Path, tmp_path: Path, face_jpeg: bytes, data: bytes | None) -> Outcome:
    """Streams run on version 1; version 2 (`data`, or a copy of version 1) is dropped into
    the repository the way an OTA update does; wait for its decision, keep the streams
    running a little longer, then stop them and account for every frame."""
    repo = canary_repo(pulled, tmp_path / "repo", CANARY)
    settings = settings_for(repo, watch_models_s=0.1)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        clients = [await open_stream(http, url) for _ in range(STREAMS)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        senders = [asyncio.create_task(blast(ws, b, face_jpeg, 3600, FPS)) for ws, b in clients]

        def answered() -> list[int]:
            return [len(b.replies) for _, b in clients]

        await wait_until(lambda: min(answered()) > 0, deadline(frames=5), answered)
        add_version(pulled, repo, "2", data)
        # loading and warming up, then the budget's frames at the canary's share of the rate,
        # each run twice (the canary and its incumbent), slowed up to 4x
        row = await _decided(http, url, deadline(frames=50 + 2 * 5 * BUDGET))
        after = answered()
        await wait_until(
            lambda: all(n > a + 5 for n, a in zip(answered(), after, strict=True)),
            deadline(frames=6, streams=STREAMS),
            lambda: f"answers after the decision: {answered()} (at it: {after})",
        )
        for s in senders:
            s.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await wait_until(
            lambda: all(not b.unanswered() for _, b in clients),
            deadline(frames=2, streams=STREAMS),
            lambda: [b.unanswered() for _, b in clients],
        )
        rows = {str(r["version"]): r for r in await models_rows(http, url)}
        metrics = await scrape(http, url)
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*readers), deadline())
    outcome = Outcome(row, rows, metrics, [b for _, b in clients])
    for books in outcome.books:
        assert books.unanswered() == [] and books.answered_twice() == []
    return outcome


def assert_rolled_back(outcome: Outcome, why: str) -> None:
    """Rolled back within the budget, counted once, and every stream back on version 1."""
    row = outcome.row
    assert row["state"] == "rolled_back" and not row["serving"], row
    assert why in row["reason"], row
    canary = row["canary"]
    assert canary["decision"] == "rolled_back" and canary["figures"]["frames"] <= BUDGET, canary
    assert outcome.rows["1"]["state"] == "ready" and outcome.rows["1"]["serving"]
    labels = {"model": "blazeface", "version": "2"}
    m = outcome.metrics
    assert total(m, "edge_canary_decisions_total", decision="rolled_back", **labels) == 1
    assert total(m, "edge_canary_decisions_total", decision="promoted", **labels) == 0
    assert total(m, "edge_model_ready", **labels) == 0
    on_canary = 0
    for books in outcome.books:
        refs = outcome.refs(books)
        tried = [r for r in refs if r != "blazeface@1"]
        on_canary += bool(tried)
        # the canary answered less than its budget (plus the frames the workers held)
        assert len(tried) <= BUDGET
        assert refs[-1] == "blazeface@1", "a stream of the canary did not go back"
    assert 0 < on_canary < STREAMS, "the canary's share: some streams, not all"


async def test_a_version_that_always_errors_is_rolled_back(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against serving a version that loads and warms up, then fails every frame:
    it is rolled back after a few errors, long before its budget."""
    outcome = await trial(pulled, tmp_path, face_jpeg, canary_models.erroring())
    assert_rolled_back(outcome, "errors")
    figures = outcome.row["canary"]["figures"]
    # 2% of 120 frames allows 2 errors: the third decides
    assert figures["error_rate"] == 1.0 and figures["frames"] == 3, figures


async def test_a_slower_version_is_rolled_back(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against promoting a version that answers alike but takes 3x the inference
    time: the gateway measures the ratio of its p95 to the incumbent's on the same batches."""
    outcome = await trial(pulled, tmp_path, face_jpeg, canary_models.slowed(pulled, 3.0))
    assert_rolled_back(outcome, "latency")
    figures = outcome.row["canary"]["figures"]
    slowest = max(figures["latency_ratio"], figures["latency_p50_ratio"])
    assert slowest > LATENCY_LIMIT and figures["agreement"] == 1.0
    assert figures["error_rate"] == 0.0


async def test_a_version_that_finds_nothing_is_rolled_back(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against promoting a version that runs fine and fast but no longer finds the
    face the serving version finds."""
    outcome = await trial(pulled, tmp_path, face_jpeg, canary_models.blind(pulled))
    assert_rolled_back(outcome, "agreement")
    figures = outcome.row["canary"]["figures"]
    assert figures["agreement"] == 0.0 and figures["error_rate"] == 0.0
    for books in outcome.books:  # what the canary's streams got while it served them
        for msgs in books.replies.values():
            if msgs[0].get("model") == "blazeface@2":
                assert msgs[0]["detections"] == []


async def test_a_good_version_is_promoted(pulled: Path, tmp_path: Path, face_jpeg: bytes) -> None:
    """Guards against rolling back a sound version on noise: a copy of the serving version is
    promoted after its budget, and then every stream runs on it."""
    outcome = await trial(pulled, tmp_path, face_jpeg, None)
    row = outcome.row
    assert row["state"] == "promoted" and row["serving"], row
    figures = row["canary"]["figures"]
    assert figures["frames"] >= BUDGET and figures["agreement"] == 1.0, figures
    assert max(figures["latency_ratio"], figures["latency_p50_ratio"]) <= LATENCY_LIMIT
    assert outcome.rows["1"]["state"] == "retired"
    labels = {"model": "blazeface", "version": "2"}
    m = outcome.metrics
    assert total(m, "edge_canary_decisions_total", decision="promoted", **labels) == 1
    assert total(m, "edge_model_ready", **labels) == 1
    for books in outcome.books:
        refs = outcome.refs(books)
        assert refs[0] == "blazeface@1" and refs[-1] == "blazeface@2"
        assert "error" not in refs


async def test_rolled_back_stays_until_retried_or_a_newer_one_arrives(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against a rolled-back version coming back by itself on the next rescan, and
    against an operator who cannot retry it: the load call's body sets the canary policy
    and asks for the retry; a newer version is tried against the incumbent, and promoted."""
    repo = canary_repo(pulled, tmp_path / "repo")
    async with running(settings_for(repo)) as (url, _), aiohttp.ClientSession() as http:
        load = url + "/v1/models/blazeface/load"
        async with http.post(load, json={"canary": {"share": 1.5}}) as r:
            assert r.status == 400 and "share" in (await r.json())["message"]
        add_version(pulled, repo, "2", canary_models.erroring())
        async with http.post(load, json={"canary": {"share": 1.0, "frames": 50}}) as r:
            assert r.status == 200
            (row,) = [r for r in (await r.json())["models"] if r["version"] == "2"]
        assert row["state"] == "canary" and row["canary"]["policy"]["share"] == 1.0, row
        ws, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(ws, books))
        sender = asyncio.create_task(blast(ws, books, face_jpeg, 3600, FPS))
        row = await _decided(http, url, deadline(frames=100))
        assert row["state"] == "rolled_back", row
        async with http.post(load) as r:  # a plain rescan: not tried again
            rows = {x["version"]: x for x in (await r.json())["models"]}
        assert rows["2"]["state"] == "rolled_back" and rows["1"]["serving"]
        async with http.post(load, data=json.dumps({"retry": True, "version": "2"})) as r:
            rows = {x["version"]: x for x in (await r.json())["models"]}
        assert rows["2"]["state"] == "canary", rows["2"]
        row = await _decided(http, url, deadline(frames=100))
        assert row["state"] == "rolled_back", row
        add_version(pulled, repo, "3")  # a copy of version 1
        async with http.post(load) as r:
            rows = {x["version"]: x for x in (await r.json())["models"]}
        assert rows["3"]["state"] == "canary" and rows["3"]["canary"]["incumbent"] == "1"
        assert rows["2"]["state"] == "rolled_back"
        row = await _decided(http, url, deadline(frames=200), "3")
        assert row["state"] == "promoted", row
        await wait_until(
            lambda: any(m[0].get("model") == "blazeface@3" for m in books.replies.values()),
            deadline(frames=5),
            lambda: books.kinds(),
        )
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await wait_until(lambda: not books.unanswered(), deadline(frames=2), books.unanswered)
        metrics = await scrape(http, url)
        await ws.close()
        await asyncio.wait_for(reader, deadline())
    assert books.answered_twice() == []
    labels = {"model": "blazeface", "version": "2", "decision": "rolled_back"}
    assert total(metrics, "edge_canary_decisions_total", **labels) == 2


async def test_with_two_processes_the_gateway_decides_once(
    spawn_gateway: Spawn, pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against serving processes that decide differently on one version: the process
    that runs the canary's frames rolls it back, the other, which has run none of them,
    follows at once, and the decision is counted once."""
    repo = canary_repo(pulled, tmp_path / "repo", "share = 1.0\nframes = 50\n")
    gw = await start(spawn_gateway, repo)
    add_version(pulled, repo, "2", canary_models.erroring())
    async with fresh() as probe, probe.post(gw.url + "/v1/models/blazeface/load") as r:
        body = await r.json()
    assert body["processes"] == {"rescanned": 2, "of": 2}, body
    async with aiohttp.ClientSession() as http:
        clients = await streams_on_both(http, gw.url, n=2)
        assert {b.hello["model"] for _, b in clients} == {"blazeface@2"}
        (a_ws, a), (b_ws, b) = [
            next(c for c in clients if c[1].hello["process"] == p) for p in (0, 1)
        ]
        reader = asyncio.create_task(read_into(a_ws, a))
        sender = asyncio.create_task(blast(a_ws, a, face_jpeg, 3600, FPS))

        def back_on_1() -> bool:
            return any(m[0].get("model") == "blazeface@1" for m in a.replies.values())

        await wait_until(back_on_1, deadline(frames=100), lambda: a.kinds())
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

        async def followed() -> bool:  # a new stream on the other process opens on version 1
            ws, books = await open_stream(http, gw.url)
            await ws.close()
            return books.hello["process"] == 1 and books.hello["model"] == "blazeface@1"

        await wait_until(followed, deadline(frames=50), "process 1 follows the rollback")
        await b_ws.send_bytes(face_jpeg)  # its first frame, on a stream opened on the canary
        reply = await next_reply(b_ws)
        assert reply["type"] == "result" and reply["model"] == "blazeface@1", reply
        await wait_until(lambda: not a.unanswered(), deadline(frames=2), a.unanswered)
        async with fresh() as probe:
            metrics = await scrape(probe, gw.url)
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(reader, deadline())
    assert a.answered_twice() == []
    labels = {"model": "blazeface", "version": "2"}
    assert total(metrics, "edge_canary_decisions_total", decision="rolled_back", **labels) == 1
    log = gw.log.read_text()
    assert log.count("canary rolled back (decided here)") == 1
    assert "canary rolled back (following process 0)" in log


async def test_a_version_that_fails_at_run_time_is_rolled_back(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against a canary judged on postprocessing alone: a session that raises at run
    time, after a clean warm-up, fails the trial too; its frames are answered
    `inference_failed`, each once, and the stream goes on with version 1."""
    repo = canary_repo(pulled, tmp_path / "repo")
    async with running(settings_for(repo)) as (url, app), aiohttp.ClientSession() as http:
        add_version(pulled, repo, "2")
        body = {"canary": {"share": 1.0, "frames": 50}}
        async with http.post(url + "/v1/models/blazeface/load", json=body) as r:
            assert r.status == 200
        canary = app[SERVICES].repo.resolve(Route("blazeface", bucket=0.0))
        assert canary.ref == "blazeface@2"

        def lost(batch: object, worker: int) -> Any:
            raise RuntimeError("injected: the session lost its device")

        canary.run_timed = lost  # type: ignore[method-assign]
        ws, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(ws, books))
        sender = asyncio.create_task(blast(ws, books, face_jpeg, 3600, FPS))
        row = await _decided(http, url, deadline(frames=100))
        await wait_until(
            lambda: any(m[0].get("model") == "blazeface@1" for m in books.replies.values()),
            deadline(frames=5),
            lambda: books.kinds(),
        )
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await wait_until(lambda: not books.unanswered(), deadline(frames=2), books.unanswered)
        await ws.close()
        await asyncio.wait_for(reader, deadline())
    assert row["state"] == "rolled_back" and row["reason"].startswith("errors"), row
    assert books.answered_twice() == []
    codes = [m[0].get("code") for m in books.replies.values() if m[0]["type"] == "error"]
    assert codes and set(codes) == {"inference_failed"}


async def test_a_promoted_version_serves_every_way_in(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """Guards against a promoted version that routing refuses: once promoted (state
    `promoted`, not `ready`), a stream pinned to it opens and a KServe request, which runs on
    the version serving by pinning it, is answered, instead of unknown_model / unavailable."""
    repo = canary_repo(pulled, tmp_path / "repo")
    async with running(settings_for(repo)) as (url, _), aiohttp.ClientSession() as http:
        await _every_stream_tries(http, url, pulled, repo, frames=20)
        ws, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(ws, books))
        sender = asyncio.create_task(blast(ws, books, face_jpeg, 3600, FPS))
        row = await _decided(http, url, deadline(frames=60))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await ws.close()
        await asyncio.wait_for(reader, deadline())
        assert row["state"] == "promoted", row
        pinned, _ = await open_stream(http, url, "blazeface@2")
        await pinned.close()
        data = base64.b64encode(face_jpeg).decode()
        image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}
        image["parameters"] = {"content_type": "base64"}
        async with http.post(url + "/v2/models/blazeface/infer", json={"inputs": [image]}) as r:
            assert r.status == 200, await r.text()


async def _every_stream_tries(
    http: aiohttp.ClientSession, url: str, pulled: Path, repo: Path, frames: int
) -> None:
    """Version 2 arrives as a canary that every stream tries, decided after `frames`."""
    add_version(pulled, repo, "2")
    body = {"canary": {"share": 1.0, "frames": frames}}
    async with http.post(url + "/v1/models/blazeface/load", json=body) as r:
        assert r.status == 200
