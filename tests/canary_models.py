"""BlazeFace versions that go wrong in the ways a canary must catch, built from the real one.

- `erroring`: loads and warms up, but its outputs are shaped so postprocessing fails on every
  frame (the client gets `postprocess_failed`);
- `blind`: the real network with -100 added to every score logit: it finds no face where the
  real one does;
- `slowed(factor)`: the real network plus a chain of matrix products computed from the input
  and added to a score as zero: the same results, `factor` times the work, measured here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

INPUT = [1, 128, 128, 3]


def _real(pulled: Path) -> onnx.ModelProto:
    return onnx.load(str(pulled / "blazeface" / "1" / "model.onnx"))


def erroring() -> bytes:
    """Input as BlazeFace's, one output shaped like the input: no scores, no boxes."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "erroring",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, INPUT)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, INPUT)],
    )
    # IR version 8: what every onnxruntime release the gateway supports reads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def _scores(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [o for o in model.graph.output if o.type.tensor_type.shape.dim[-1].dim_value == 1]


def _redirect(model: onnx.ModelProto, output: onnx.ValueInfoProto, name: str) -> None:
    """Make graph output `output` read tensor `name` instead."""
    output.name = name


def blind(pulled: Path) -> bytes:
    model = _real(pulled)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array(-100.0, np.float32), "minus_100"))
    for i, out in enumerate(_scores(model)):
        g.node.append(helper.make_node("Add", [out.name, "minus_100"], [f"blind_{i}"]))
        _redirect(model, out, f"blind_{i}")
    return model.SerializeToString()


def _with_work(pulled: Path, products: int) -> bytes:
    model = _real(pulled)
    g = model.graph
    source = g.input[0].name
    rng = np.random.default_rng(0)
    # orthogonal: a chain of products keeps the input's scale (no overflow, no denormals)
    w = np.linalg.qr(rng.standard_normal((32, 32)))[0].astype(np.float32)
    g.initializer.extend(
        [
            numpy_helper.from_array(w, "work_w"),
            numpy_helper.from_array(np.array([1536, 32], np.int64), "work_shape"),
            numpy_helper.from_array(np.array(0.0, np.float32), "work_zero"),
        ]
    )
    g.node.append(helper.make_node("Reshape", [source, "work_shape"], ["work_0"]))
    for k in range(products):
        g.node.append(helper.make_node("MatMul", [f"work_{k}", "work_w"], [f"work_{k + 1}"]))
    g.node.append(helper.make_node("ReduceMean", [f"work_{products}"], ["work_mean"], keepdims=0))
    g.node.append(helper.make_node("Mul", ["work_mean", "work_zero"], ["work_nothing"]))
    out = _scores(model)[0]
    g.node.append(helper.make_node("Add", [out.name, "work_nothing"], ["slowed_0"]))
    _redirect(model, out, "slowed_0")
    return model.SerializeToString()


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def cost_ratio(data: bytes, reference: bytes, runs: int = 20) -> float:
    """The CPU time one run of `data` takes over that of `reference`, on single-threaded CPU
    sessions (which run on the calling thread) whose runs take turns: the cheapest run of
    each. CPU time, as the gateway's trial measures (LoadedModel.run_costed): on a busy
    machine the seconds of a longer run include more waits for a core, which would make the
    slowed model look slower than it is, and get it made with too little work."""
    sessions = [_session(data), _session(reference)]
    times: list[list[float]] = [[], []]
    feed = {sessions[0].get_inputs()[0].name: np.zeros(INPUT, np.float32)}
    for s in sessions:
        s.run(None, feed)
    for _ in range(runs):
        for s, t in zip(sessions, times, strict=True):
            t0 = time.thread_time()
            s.run(None, feed)
            t.append(time.thread_time() - t0)
    return min(times[0]) / min(times[1])


def slowed(pulled: Path, factor: float) -> bytes:
    """The real network with extra work, grown by half at a time until it costs `factor`
    times the real one on this machine (so a faster or slower machine gets the same ratio,
    between `factor` and about 1.5 x `factor`)."""
    real = _real(pulled).SerializeToString()
    products = 4
    for _ in range(20):
        data = _with_work(pulled, products)
        ratio = cost_ratio(data, real)
        if ratio >= factor:
            return data
        products = int(products * 1.5) + 1
    raise AssertionError(f"could not make BlazeFace {factor}x slower: {ratio:.2f}x")
