"""The model repository as clients see it: several models, versions, hot reload, A/B."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import aiohttp
import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edge.inference.onnxfile import ExternalData, check_self_contained
from tests.conftest import GatewayProcess, png, running, settings_for, wait_ready
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, wait_until
from tests.wsclient import next_reply, open_stream, read_into

pytestmark = pytest.mark.integration

BLAZEFACE_TOML = Path(__file__).parent.parent / "models" / "blazeface" / "model.toml"


def face_repo_copy(pulled: Path, root: Path, versions: tuple[str, ...] = ("1",)) -> Path:
    (root / "blazeface").mkdir(parents=True)
    shutil.copy(pulled / "blazeface" / "model.toml", root / "blazeface" / "model.toml")
    for v in versions:
        add_version(pulled, root, v)
    return root


def add_version(pulled: Path, root: Path, version: str, data: bytes | None = None) -> None:
    """Drop a version in the way an OTA update should: write aside, then rename."""
    tmp = root / "blazeface" / f".incoming-{version}"
    tmp.mkdir()
    if data is None:
        shutil.copy(pulled / "blazeface" / "1" / "model.onnx", tmp / "model.onnx")
    else:
        (tmp / "model.onnx").write_bytes(data)
    os.rename(tmp, root / "blazeface" / version)


async def models_rows(http: aiohttp.ClientSession, url: str) -> list[dict[str, object]]:
    async with http.get(url + "/v1/models") as r:
        return (await r.json())["models"]  # type: ignore[no-any-return]


async def loaded_versions(
    http: aiohttp.ClientSession, url: str, within: float
) -> dict[str, dict[str, object]]:
    """The rows by version once none is loading: /readyz turns 200 as soon as one version of
    each model serves, and the others may still be loading then."""
    rows: dict[str, dict[str, object]] = {}

    async def none_loading() -> bool:
        rows.update({str(r["version"]): r for r in await models_rows(http, url)})
        return all(r["state"] != "loading" for r in rows.values())

    await wait_until(none_loading, within, lambda: f"every version loaded: {rows}")
    return rows


async def test_two_real_models_at_once(pulled: Path, face_jpeg: bytes) -> None:
    """Faces from the face model and text boxes from the text model, side by side."""
    async with running(settings_for(pulled)) as (url, _), aiohttp.ClientSession() as http:
        rows = await models_rows(http, url)
        assert {(r["name"], r["state"]) for r in rows} >= {
            ("blazeface", "ready"),
            ("ppocr_det", "ready"),
        }
        faces, _ = await open_stream(http, url, "blazeface")
        text, hello = await open_stream(http, url, "ppocr_det")
        assert hello.hello["model"] == "ppocr_det@1"
        await faces.send_bytes(face_jpeg)
        await text.send_bytes(png("page.png"))
        f = await next_reply(faces)
        t = await next_reply(text, deadline(model="ppocr_det"))
        assert f["model"] == "blazeface@1" and len(f["detections"]) == 1
        assert t["model"] == "ppocr_det@1" and len(t["detections"]) >= 5
        assert all(d["label"] == "text" for d in t["detections"])
        # switching a stream's model mid-stream
        await faces.send_str(json.dumps({"type": "config", "model": "ppocr_det"}))
        assert (await next_reply(faces))["model"] == "ppocr_det@1"
        await faces.send_bytes(png("text.png"))
        r = await next_reply(faces, deadline(model="ppocr_det"))
        assert r["model"] == "ppocr_det@1" and r["detections"]
        for ws in (faces, text):
            await ws.close()


async def test_hot_reload_switches_versions_and_survives_a_corrupt_one(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """A new version dropped in while 4 streams run: results switch to it, every frame is
    still answered exactly once; a corrupt newer version leaves the good one serving. (With
    canaries off: the plain swap; test_canary.py tries new versions first.)"""
    repo = face_repo_copy(pulled, tmp_path / "repo")
    settings = settings_for(repo, watch_models_s=0.1, canary=False)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        clients = [await open_stream(http, url) for _ in range(4)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        # each stream at 40 frames a second until the versions have come and gone
        senders = [asyncio.create_task(blast(ws, b, face_jpeg, 3600, 40.0)) for ws, b in clients]
        load = deadline(frames=50)  # a version loads and warms up: a few runs, a session made

        def results_from(version: str) -> list[int]:
            return [
                sum(m[0].get("model") == f"blazeface@{version}" for m in b.replies.values())
                for _, b in clients
            ]

        await wait_until(lambda: min(results_from("1")) > 0, load, lambda: results_from("1"))
        add_version(pulled, repo, "2")
        await wait_until(lambda: min(results_from("2")) > 0, load, lambda: results_from("2"))
        add_version(pulled, repo, "3", b"this is not an onnx model")
        rows: dict[str, dict[str, object]] = {}

        async def version_3_failed() -> bool:
            rows.update({str(r["version"]): r for r in await models_rows(http, url)})
            return rows.get("3", {}).get("state") == "failed"

        await wait_until(version_3_failed, load, lambda: f"version 3 refused: {rows}")
        after_3 = results_from("2")
        await wait_until(
            lambda: all(n > m + 5 for n, m in zip(results_from("2"), after_3, strict=True)),
            deadline(frames=6, streams=len(clients)),
            lambda: f"results from version 2 after version 3 failed: {results_from('2')}",
        )
        for s in senders:
            s.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await wait_until(
            lambda: all(not b.unanswered() for _, b in clients),
            deadline(frames=2, streams=len(clients)),
            lambda: [b.unanswered() for _, b in clients],
        )
        rows = {r["version"]: r for r in await models_rows(http, url)}
        metrics = await scrape(http, url)
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*readers), deadline())
    assert rows["2"]["serving"] and rows["2"]["state"] == "ready"
    assert rows["3"]["state"] == "failed" and "onnx" in str(rows["3"]["reason"]).lower()
    assert rows["1"]["state"] == "retired"
    assert total(metrics, "edge_model_load_failures_total", model="blazeface") == 1
    assert total(metrics, "edge_model_ready", model="blazeface", version="2") == 1
    for _, books in clients:
        assert books.unanswered() == [] and books.answered_twice() == []
        versions = [
            m[0]["model"] for _, m in sorted(books.replies.items()) if m[0]["type"] == "result"
        ]
        assert versions[0] == "blazeface@1" and versions[-1] == "blazeface@2"
        switch = versions.index("blazeface@2")
        assert set(versions[switch:]) == {"blazeface@2"}, "went back to the old version"


async def test_sighup_and_load_endpoint_reload(spawn_gateway, pulled: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With polling off, SIGHUP and POST /v1/models/{name}/load pick up new versions (swapped
    in at once, with canaries off)."""
    repo = face_repo_copy(pulled, tmp_path / "repo")
    gw: GatewayProcess = spawn_gateway(repo, {"EDGE_WATCH_MODELS_S": "0", "EDGE_CANARY": "0"})
    await wait_ready(gw.url)
    async with aiohttp.ClientSession() as http:
        add_version(pulled, repo, "2")
        await asyncio.sleep(0.5)
        assert not any(r["version"] == "2" for r in await models_rows(http, gw.url))
        gw.signal(signal.SIGHUP)
        rows: list[dict[str, object]] = []

        async def version_2_serves() -> bool:
            rows[:] = await models_rows(http, gw.url)
            return any(r["version"] == "2" and r["serving"] for r in rows)

        await wait_until(
            version_2_serves, deadline(frames=50), lambda: f"SIGHUP to load version 2: {rows}"
        )
        add_version(pulled, repo, "3")
        async with http.post(gw.url + "/v1/models/blazeface/load") as r:
            assert r.status == 200
            rows = (await r.json())["models"]
        assert any(r["version"] == "3" and r["serving"] for r in rows)
        ws, books = await open_stream(http, gw.url)
        assert books.hello["model"] == "blazeface@3"
        await ws.close()


async def test_ab_split_is_sticky_per_stream(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """model.toml weights split streams across versions; each stream keeps its version."""
    repo = face_repo_copy(pulled, tmp_path / "repo", ("1", "2"))
    toml = repo / "blazeface" / "model.toml"
    toml.write_text(toml.read_text() + '\n[versions]\n"1" = 0.5\n"2" = 0.5\n')
    async with running(settings_for(repo)) as (url, _), aiohttp.ClientSession() as http:
        rows = await loaded_versions(http, url, deadline(frames=50))
        assert rows["1"]["state"] == rows["2"]["state"] == "ready", rows
        seen: dict[str, int] = {}
        for _ in range(16):
            ws, books = await open_stream(http, url)
            assigned = books.hello["model"]
            seen[assigned] = seen.get(assigned, 0) + 1
            for _ in range(3):
                await ws.send_bytes(face_jpeg)
                assert (await next_reply(ws))["model"] == assigned
            await ws.close()
        assert set(seen) == {"blazeface@1", "blazeface@2"}, seen
        ws, books = await open_stream(http, url, "blazeface@1")  # pinning beats the split
        assert books.hello["model"] == "blazeface@1"
        await ws.close()


def _tiny_model_with_external_data(path: Path, location: str) -> None:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128, 128, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128, 128, 3])],
        initializer=[weights],
    )
    # An IR version every supported onnxruntime reads (1.23, the last for Python 3.10, stops
    # at 11); onnx writes its newest by default.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    w = model.graph.initializer[0]
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(model, str(path))


def test_external_data_is_found_before_onnxruntime_reads_the_file(
    pulled: Path, tmp_path: Path
) -> None:
    """The gateway's own check, independent of the onnxruntime release: real models pass, a
    tensor with external data is refused wherever it sits (here inside an If's subgraph)."""
    for path in pulled.rglob("*.onnx"):
        check_self_contained(path.read_bytes())
    _tiny_model_with_external_data(tmp_path / "top.onnx", "w.bin")
    with pytest.raises(ExternalData, match="external"):
        check_self_contained((tmp_path / "top.onnx").read_bytes())
    inner = onnx.load(str(tmp_path / "top.onnx"), load_external_data=False).graph
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)
    outer = helper.make_graph([node], "outer", [cond], list(inner.output))
    wrapped = helper.make_model(outer, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(ExternalData, match="external"):
        check_self_contained(wrapped.SerializeToString())


@given(st.binary(max_size=512))
def test_any_bytes_pass_or_get_a_clear_refusal(data: bytes) -> None:
    try:
        check_self_contained(data)
    except ExternalData:
        pass


async def test_model_files_reaching_outside_are_refused(pulled: Path, tmp_path: Path) -> None:
    """A model is data: a symlinked file and ONNX external data pointing outside the
    repository are refused with a reason; the good version keeps serving."""
    repo = face_repo_copy(pulled, tmp_path / "repo")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.ones(1, np.float32).tobytes())
    (repo / "blazeface" / "2").mkdir()
    (repo / "blazeface" / "2" / "model.onnx").symlink_to(pulled / "blazeface" / "1" / "model.onnx")
    (repo / "blazeface" / "3").mkdir()
    _tiny_model_with_external_data(repo / "blazeface" / "3" / "model.onnx", "../../../outside.bin")
    toml = repo / "blazeface" / "model.toml"
    toml.write_text(toml.read_text() + '\n[versions]\n"1" = 1.0\n"2" = 0.0\n"3" = 0.0\n')
    async with running(settings_for(repo)) as (url, _), aiohttp.ClientSession() as http:
        rows = await loaded_versions(http, url, deadline(frames=50))
    assert rows["1"]["state"] == "ready" and rows["1"]["serving"]
    assert rows["2"]["state"] == "failed" and "symlink" in str(rows["2"]["reason"])
    # refused by the gateway before onnxruntime reads it (edge/inference/onnxfile.py), whatever the
    # onnxruntime release would do with the path; the reason names the file reached for
    reason = str(rows["3"]["reason"])
    assert rows["3"]["state"] == "failed" and "external" in reason and "outside.bin" in reason


async def test_shadow_version_is_measured_but_never_answers(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """A shadow candidate runs on sampled frames: its latency and agreement reach the metrics,
    and clients only ever see the serving version."""
    repo = face_repo_copy(pulled, tmp_path / "repo", ("1", "2"))
    toml = repo / "blazeface" / "model.toml"
    toml.write_text(toml.read_text() + '\n[shadow]\nversion = "2"\nsample = 1.0\n')
    async with running(settings_for(repo)) as (url, _), aiohttp.ClientSession() as http:
        rows = await loaded_versions(http, url, deadline(frames=50))
        assert rows["1"]["serving"] and not rows["2"]["serving"]
        assert rows["2"]["state"] == "ready"
        ws, books = await open_stream(http, url)
        assert books.hello["model"] == "blazeface@1"
        for _ in range(5):
            await ws.send_bytes(face_jpeg)
            assert (await next_reply(ws))["model"] == "blazeface@1"
        await ws.close()
        labels = {"model": "blazeface", "version": "2"}
        metrics: dict[tuple[str, tuple], float] = {}

        async def shadow_ran() -> bool:  # after the client's result is on its way
            metrics.update(await scrape(http, url))
            return total(metrics, "edge_shadow_agreement_count", **labels) >= 5

        await wait_until(
            shadow_ran,
            deadline(frames=5),
            lambda: f"5 shadow runs: {total(metrics, 'edge_shadow_agreement_count', **labels)}",
        )
    assert total(metrics, "edge_shadow_agreement_count", **labels) == 5
    assert total(metrics, "edge_shadow_agreement_sum", **labels) == 5.0  # same weights agree
    assert total(metrics, "edge_shadow_latency_seconds_count", **labels) == 5
