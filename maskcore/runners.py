"""Runners: where the shared stages run. One protocol, two implementations.

Every job (batch, worker, serverless handler, benchmark) hands a :class:`Runner` the same
things: refs, the source that reads them, the loaded analyzer, ``emit``, and :class:`RunOptions`.
Rows come back through ``emit`` in input order, built by the one
:class:`~maskcore.manifest.RowBuilder`; ``on_batch`` sees each batch's rows after they were
emitted; ``stop`` ends the run after the tasks in flight. Which runner to use is decided once,
by :func:`make_runner`.

* :class:`LocalRunner` - decode processes (or threads) on this machine, the default
  (:func:`maskcore.pipeline.classify`).
* :class:`RayRunner` - the same stages as Ray Data tasks and actors on a cluster
  (:func:`maskcore.ray_runner.classify_ray`); Ray is imported only when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from maskcore.errors import UsageError
from maskcore.faces import Analyzer, FaceOptions, open_analyzer
from maskcore.pipeline import StageTimes, classify
from maskcore.pool import capped_workers
from maskcore.progress import Progress
from maskcore.settings import DEFAULTS
from maskcore.storage import Ref, Source

__all__ = ["RUNNERS", "LocalRunner", "RayRunner", "RunOptions", "RunReport", "Runner",
           "make_runner"]

#: The runner names the CLI accepts (``--runner``); the first is the default.
RUNNERS = ("local", "ray")

Row = dict[str, Any]


@dataclass(frozen=True)
class RunOptions:
    """How a run batches, labels and reports back, whichever runner runs it.

    Attributes:
        batch_size: pictures per engine call.
        threshold: a top score below it labels a face or picture ``uncertain``.
        progress: counts rows as they are emitted.
        row_extra: extra fields for a ref's rows (the worker's ``etag``); a module-level
            function, since it may travel to other processes.
        on_batch: called with each batch's rows after they were emitted.
        stop: polled between tasks; once it returns True no new task starts, and the tasks
            in flight finish and are emitted.
    """

    batch_size: int = DEFAULTS.batch_size
    threshold: float = DEFAULTS.threshold
    progress: Progress | None = None
    row_extra: Callable[[Ref], Row] | None = None
    on_batch: Callable[[list[Row]], None] | None = None
    stop: Callable[[], bool] | None = None


@dataclass
class RunReport:
    """What a run measured: seconds per stage, and the cluster's resources (Ray only)."""

    times: StageTimes
    cluster: dict[str, float] = field(default_factory=dict)


class Runner(Protocol):
    """Classifies refs with an analyzer; rows reach ``emit`` in input order."""

    @property
    def name(self) -> str:
        """What ``--runner`` calls it."""
        ...

    @property
    def device(self) -> str:
        """The device its engines are asked for (``auto``, ``cpu``, ``cuda``)."""
        ...

    def open_analyzer(self, model: str | None, *, precision: str = DEFAULTS.precision,
                      faces: FaceOptions | None = None) -> Analyzer:
        """The driver's analyzer: the models this runner will run, and their cards (``faces``
        None: the face stage's defaults).

        Raises:
            UsageError: options that cannot work here (Ray not installed, no CUDA).
            ModelError: the classifier or the detector cannot be used.
        """
        ...

    def facts(self, analyzer: Analyzer) -> dict[str, Any]:
        """``runner``, ``device``, ``provider`` and the runner's size (``workers``: decode
        processes here; ``inference_actors`` on Ray), as the summaries report them."""
        ...

    def run(self, refs: Iterable[Ref], source: Source, analyzer: Analyzer,
            emit: Callable[[Row], None], options: RunOptions = RunOptions()) -> RunReport:
        """Classify every ref and hand each picture row to ``emit``, in input order."""
        ...


@dataclass(frozen=True)
class LocalRunner:
    """This machine: ``workers`` decode processes (None: all cores; 0: threads of this process)."""

    workers: int | None = None
    device: str = DEFAULTS.device
    name: str = "local"

    def open_analyzer(self, model: str | None, *, precision: str = DEFAULTS.precision,
                      faces: FaceOptions | None = None) -> Analyzer:
        return open_analyzer(model, device=self.device, precision=precision,
                             faces=faces or FaceOptions())

    def facts(self, analyzer: Analyzer) -> dict[str, Any]:
        return {"runner": self.name, "device": analyzer.engine.device,
                "provider": analyzer.engine.provider, "workers": capped_workers(self.workers)}

    def run(self, refs: Iterable[Ref], source: Source, analyzer: Analyzer,
            emit: Callable[[Row], None], options: RunOptions = RunOptions()) -> RunReport:
        o = options
        times = classify(refs, source, analyzer, emit, batch_size=o.batch_size,
                         workers=self.workers, threshold=o.threshold, progress=o.progress,
                         row_extra=o.row_extra, on_batch=o.on_batch, stop=o.stop)
        return RunReport(times)


@dataclass(frozen=True)
class RayRunner:
    """A Ray cluster (or an in-process Ray); each actor loads the analyzer on ``device``."""

    options: Any = None  # maskcore.ray_runner.RayOptions; None: its defaults
    device: str = DEFAULTS.device
    name: str = "ray"

    def open_analyzer(self, model: str | None, *, precision: str = DEFAULTS.precision,
                      faces: FaceOptions | None = None) -> Analyzer:
        """Only the cards are read here, on the CPU: the actors run the models. The precision is
        settled for them (``auto`` is float32 when they get GPUs, else what a CPU runs), so the
        model id the driver reports, and the worker's ledger files under, is the one they run."""
        from maskcore.ray_runner import require_ray

        require_ray()
        if precision == "auto" and (self.device == "cuda" or self.actors_on_gpu):
            precision = "fp32"
        return open_analyzer(model, device="cpu", precision=precision, faces=faces or FaceOptions())

    def facts(self, analyzer: Analyzer) -> dict[str, Any]:
        from maskcore.ray_runner import RayOptions

        return {"runner": self.name, "device": self.device, "provider": "per Ray actor",
                "inference_actors": (self.options or RayOptions()).inference_actors}

    def run(self, refs: Iterable[Ref], source: Source, analyzer: Analyzer,
            emit: Callable[[Row], None], options: RunOptions = RunOptions()) -> RunReport:
        from maskcore.ray_runner import RayOptions, classify_ray

        o = options
        times, cluster = classify_ray(refs, source, analyzer, emit, device=self.device,
                                      batch_size=o.batch_size, threshold=o.threshold,
                                      progress=o.progress, row_extra=o.row_extra,
                                      on_batch=o.on_batch, stop=o.stop,
                                      options=self.options or RayOptions())
        return RunReport(times, cluster)

    @property
    def actors_on_gpu(self) -> bool:
        """Whether the actors get a GPU each (the driver then need not have one)."""
        return bool(self.options and self.options.gpus_per_actor > 0)


def make_runner(name: str = RUNNERS[0], *, workers: int | None = None,
                device: str = DEFAULTS.device, ray_options: Any = None) -> Runner:
    """The runner called ``name``, sized by the job's options.

    Raises:
        UsageError: an unknown runner name.
    """
    if name == "local":
        return LocalRunner(workers=capped_workers(workers), device=device)
    if name == "ray":
        return RayRunner(options=ray_options, device=device)
    raise UsageError(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")
