"""`edge bench`: the order of it all. Baselines first (the ceiling measured several times:
if it moves more than `max_drift` the machine is too busy to measure, and the bench refuses),
then the gateway's runs over each transport, the long overload beside the naive server, the
ceiling once more, and the report."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.util
import shutil
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from edge.bench import scenarios
from edge.bench.baselines import CeilingPool, RawSession, ort_providers, plain_loop
from edge.bench.frames import PAGE_LINES, frame_jpeg
from edge.bench.links import TransportUnavailable, opener
from edge.bench.machine import machine, versions
from edge.bench.options import Options
from edge.bench.results import BenchResults, ModelResults
from edge.bench.servers import (
    Server,
    ServerError,
    batch_sizes,
    gateway,
    naive_server,
    scratch_repository,
    wait_ready,
)
from edge.bench.stagerun import described
from edge.bench.stats import drift
from edge.inference.modelspec import ModelSpec

#: exit codes besides 0
BAD_ARGUMENTS, SERVER_FAILED, TOO_BUSY = 2, 1, 3


class TooBusy(Exception):
    """The machine's speed moved too much between measurements of its ceiling."""


def plan_for(options: Options) -> scenarios.Plan:
    """The standard plan (or the quick one), with the lengths and widths asked for."""
    plan = scenarios.QUICK if options.quick else scenarios.FULL
    changes: dict[str, Any] = {"clients": options.clients}
    if options.seconds:
        changes |= {"seconds": options.seconds, "unloaded_seconds": options.seconds / 2}
        changes["age_seconds"] = 3 * options.seconds
    if options.streams:
        changes |= {"streams": options.streams, "fairness_streams": 4 * options.streams}
    return dataclasses.replace(plan, **changes)


def main(options: Options) -> int:
    problem = _check(options)
    if problem:
        print(f"edge bench: {problem}", file=sys.stderr)
        return BAD_ARGUMENTS
    say = scenarios.progress(time.monotonic())
    plan = plan_for(options)
    results = BenchResults(
        command=options.command,
        started=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions(),
        plan=_words(options, plan),
        quick=options.quick,
    )
    try:
        _measure(options, plan, results, say)
    except TooBusy as e:
        print(f"edge bench: {e}", file=sys.stderr)
        return TOO_BUSY
    except ServerError as e:
        print(f"edge bench: {e}", file=sys.stderr)
        return SERVER_FAILED
    from edge.bench.report import write

    path = write(results, options.out)
    say(f"report: {path}")
    for warning in results.warnings:
        print(f"edge bench: {warning}", file=sys.stderr)
    return TOO_BUSY if results.warnings and not options.force else 0


def _words(options: Options, plan: scenarios.Plan) -> dict[str, str]:
    """The run's settings in words, for the report's header."""
    import onnxruntime

    served = (
        f"the gateway at {options.url}"
        if options.url
        else f"edge serve --processes {options.processes}, started by the bench"
    )
    return {
        "gateway": served,
        "providers": f"{options.providers} (onnxruntime has "
        f"{', '.join(onnxruntime.get_available_providers())})",
        "transports": ", ".join(options.transports),
        **plan.words(),
    }


def _check(options: Options) -> str | None:
    """Why these options cannot run, in one line; None when they can."""
    if importlib.util.find_spec("matplotlib") is None:
        return "the charts need matplotlib: pip install 'edge-gateway[bench]'"
    for name in options.transports:
        try:
            opener(name)
        except TransportUnavailable as e:
            return str(e)
    for model in options.models:
        if not (options.repository / model / "model.toml").exists():
            return f"no model {model!r} in {options.repository} (--repository, EDGE_MODELS)"
    if options.url and not options.url.startswith(("http://", "https://")):
        return f"--url {options.url!r}: give the gateway's http:// or https:// address"
    return None


def _measure(
    options: Options, plan: scenarios.Plan, results: BenchResults, say: scenarios.Say
) -> None:
    scratch = scratch_repository(options.repository, options.models)
    try:
        with contextlib.ExitStack() as stack:
            if options.url:
                host = urllib.parse.urlsplit(options.url).hostname
                gw = Server(options.url.rstrip("/"), grpc=options.grpc or f"{host}:8081")
                asyncio.run(wait_ready(gw, 30.0))
            else:
                say(f"starting the gateway: edge serve --processes {options.processes}")
                flags = ("--processes", options.processes)
                gw = stack.enter_context(gateway(scratch, options.providers, flags))
            for model in options.models:
                results.models.append(_model(model, gw, scratch, options, plan, results, say))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _model(
    model: str, gw: Server, models: Path, options: Options, plan: scenarios.Plan,
    results: BenchResults, say: scenarios.Say,
) -> ModelResults:  # fmt: skip
    """Every run for one model, in order, between two measurements of its ceiling."""
    image = options.image_for(model)
    spec = ModelSpec.load(models / model)
    data = frame_jpeg(options.size, image, reads_text=bool(spec.stages))
    w, h = options.size
    drawn = (
        f"a drawn page of {len(PAGE_LINES)} printed lines" if spec.stages else "a drawn test card"
    )
    source = image.name if image else drawn
    got = ModelResults(model, f"{w}x{h} JPEG of {source}, {len(data) / 1e3:.0f} kB")
    got.stages = described(spec)
    providers = ort_providers(options.providers)
    say(f"{model}: the ceiling, {plan.ceiling_repeats} x {plan.ceiling_seconds:g} s")
    with CeilingPool(models, model, data, providers) as pool:
        for _ in range(plan.ceiling_repeats):
            got.ceilings.append(pool.measure(plan.ceiling_seconds))
            say(f"{model}: ceiling {got.ceilings[-1].fps:.1f} frames/s")
        _steady(model, [b.fps for b in got.ceilings], options, results)
        say(f"{model}: a plain loop, then the raw sessions")
        got.loop = plain_loop(models, model, data, plan.baseline_seconds, providers)
        raw = RawSession(models, model, data, providers)
        got.raw = raw.baseline(plan.baseline_seconds)
        got.notes += raw.log
        ceiling = got.ceiling()
        for transport in options.transports:
            got.runs += scenarios.gateway_runs(gw, transport, model, data, ceiling, plan, say)
        got.batches = asyncio.run(batch_sizes(gw.url, model))
        got.runs.append(scenarios.age_run(gw, "gateway", model, data, ceiling, plan, say))
        say(f"{model}: starting the naive in-order server")
        with naive_server(models, model, options.providers) as naive:
            got.runs.append(scenarios.age_run(naive, "naive", model, data, ceiling, plan, say))
        got.ceiling_after = pool.measure(plan.ceiling_seconds)
    say(f"{model}: ceiling after the runs {got.ceiling_after.fps:.1f} frames/s")
    every = [b.fps for b in got.ceilings] + [got.ceiling_after.fps]
    if drift(every) > options.max_drift:
        results.warnings.append(
            f"{model}: the ceiling moved {drift(every):.0%} from before the runs to after them "
            f"({_listed(every)} frames/s; at most {options.max_drift:.0%} allowed): the machine's "
            "speed changed while it was measured, so its figures are not comparable"
        )
    return got


def _steady(model: str, fps: list[float], options: Options, results: BenchResults) -> None:
    """Refuse (TooBusy) when the ceiling moved more than allowed between its measurements;
    with --force, note it for the report instead."""
    moved = drift(fps)
    if moved <= options.max_drift:
        return
    what = (
        f"{model}: the ceiling moved {moved:.0%} between {len(fps)} measurements "
        f"({_listed(fps)} frames/s; at most {options.max_drift:.0%} allowed)"
    )
    if options.force:
        results.forced.append(what)
        return
    raise TooBusy(
        f"the machine is too busy to measure. {what}; load average "
        f"{results.machine['load average at start (1 / 5 / 15 min)']} on "
        f"{results.machine['cores']} cores. Stop other work and run again, allow more with "
        "--max-drift, or measure anyway with --force (the report will say so)"
    )


def _listed(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)
