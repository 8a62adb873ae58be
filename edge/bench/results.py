"""What a benchmark found, as plain dataclasses: what the report and the charts are drawn
from, and what results.json holds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from edge.bench.baselines import Baseline
from edge.bench.load import Run


@dataclass
class Measured:
    """One load run against one server, with the server's CPU time over the run."""

    scenario: str  # unloaded | load | fairness | age
    server: str  # gateway | naive
    transport: str
    factor: float  # offered load as a multiple of the ceiling (unloaded: a fixed low rate)
    run: Run
    cpu_seconds: float | None = None  # None: not measured (a gateway this bench did not start)

    def cpu_cores(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds / self.run.seconds

    def cpu_ms_per_result(self) -> float | None:
        got = self.run.throughput() * self.run.seconds
        return None if self.cpu_seconds is None or not got else 1e3 * self.cpu_seconds / got


@dataclass
class ModelResults:
    model: str
    frame: str  # what every client sent, in words
    ceilings: list[Baseline] = field(default_factory=list)  # measured before the runs
    ceiling_after: Baseline | None = None  # measured again after them
    loop: Baseline | None = None
    raw: Baseline | None = None
    runs: list[Measured] = field(default_factory=list)
    batches: dict[str, float] = field(default_factory=dict)  # from the gateway's /metrics
    notes: list[str] = field(default_factory=list)
    #: the model's stages in words, first to last (more than one: later stages on crops)
    stages: list[str] = field(default_factory=list)

    def ceiling(self) -> float:
        """What the machine can do with this model: the median of the ceilings measured
        before the runs (frames a second)."""
        return statistics.median(b.fps for b in self.ceilings)

    def find(self, scenario: str, server: str = "gateway") -> list[Measured]:
        return [m for m in self.runs if m.scenario == scenario and m.server == server]


@dataclass
class BenchResults:
    command: str
    started: str  # UTC, ISO 8601
    machine: dict[str, str]
    versions: dict[str, str]
    plan: dict[str, str]  # the run's settings, in words
    quick: bool = False
    #: what would have refused the measurement, had --force not been given
    forced: list[str] = field(default_factory=list)
    #: what makes the figures doubtful even so (the ceiling moved during the run)
    warnings: list[str] = field(default_factory=list)
    models: list[ModelResults] = field(default_factory=list)
