"""The Ray Data runner: the same stages as :mod:`maskcore.pipeline`, executed on a Ray cluster.

refs -> ``map_batches(decode_batch)`` CPU tasks (the shared :func:`~maskcore.decode.decode_refs`)
-> ``map_batches(Classifier)`` on an actor pool (the shared :class:`~maskcore.faces.Analyzer`:
detector and classifier, loaded once per actor; a GPU each with ``gpus_per_actor=1``) -> rows
built by the shared :class:`~maskcore.manifest.RowBuilder`. Rows stream back to the
driver in input order (``preserve_order``), a batch at a time, so the driver never holds them all.

Nothing here decodes, preprocesses or formats a row itself: it only tells Ray where to run the
functions the local runner runs. On one machine the local runner is faster (see docs/SCALE.md);
this one is for clusters. Ray is optional (``pip install 'maskcore[ray]'``) and imported only here.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskcore.decode import CHUNK, decode_refs
from maskcore.detector import DetectorSpec
from maskcore.errors import UsageError
from maskcore.faces import Analyzer, FaceOptions
from maskcore.pipeline import StageTimes
from maskcore.pool import default_workers
from maskcore.preprocess import PreprocessSpec
from maskcore.progress import Progress
from maskcore.settings import DEFAULTS
from maskcore.stopping import SIGNALS
from maskcore.storage import Ref, Source

__all__ = ["Classifier", "RayOptions", "classify_ray", "decode_batch", "require_ray"]

INSTALL_HINT = "pip install 'maskcore[ray]' (make install does it)"


@dataclass(frozen=True)
class RayOptions:
    """Where Ray runs and how the inference actors are sized."""

    address: str | None = None  # None starts Ray in-process; "auto" or a URL joins a cluster
    inference_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    local_cpus: int | None = None  # CPUs for an in-process Ray; default all cores


def require_ray() -> Any:
    """Import Ray, or fail with how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--runner ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def decode_batch(batch: dict[str, np.ndarray], source: Source, spec: PreprocessSpec,
                 faces: DetectorSpec | None) -> dict[str, np.ndarray]:
    """Ray task: read and decode a batch of refs with the shared decode task.

    Each decoded item travels pickled in a binary column (its pixels are a whole picture or a
    model input, whichever the face stage needs; Arrow has no column type for either).
    """
    refs = [Ref(source=str(s), key=str(k), etag=str(e), size=int(n), problem=str(p))
            for s, k, e, n, p in zip(batch["source"], batch["key"], batch["etag"], batch["size"],
                                     batch["problem"], strict=True)]
    items, _ = decode_refs(source, refs, spec, faces)
    return {"order": batch["order"],
            "item": np.array([pickle.dumps(it) for it in items], dtype=object)}


def _decode_memory(spec: PreprocessSpec, faces: DetectorSpec | None) -> int:
    """Bytes a decode task may need: the largest allowed picture as RGBA, plus its batch."""
    h, w = spec.size
    # With the face stage an item holds the picture (at most about twice the canvas a side, as
    # JPEG drafts), its uint8 canvas and, for a large JPEG, its file's bytes: counted as the
    # larger canvas's 6 L^2 RGB pixels (30 MB at 1,280 px), which leaves room for the file.
    per_item = h * w * 3 * 4 if faces is None else faces.largest_canvas ** 2 * 3 * 6
    return spec.max_pixels * 4 + CHUNK * per_item * 2 + (64 << 20)


class Classifier:
    """Ray actor: the shared analyzer, loaded once, turning decoded batches into rows (as JSON)."""

    def __init__(self, model: str, device: str, precision: str, detector_precision: str,
                 faces: FaceOptions, threshold: float,
                 row_extra: Callable[[Ref], dict[str, Any]] | None) -> None:
        from maskcore.faces import load_analyzer
        from maskcore.pipeline import row_builder

        self.analyzer = load_analyzer(model, precision, faces, threads=None,
                                      device=device,  # type: ignore[arg-type]
                                      detector_precision=detector_precision)
        self.rows = row_builder(self.analyzer, threshold, row_extra)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(b) for b in batch["item"]]
        rows = self.rows(self.analyzer.infer(items))
        return {"order": batch["order"],
                "row": np.array([json.dumps(r) for r in rows], dtype=object)}


def _start(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    # ray.init puts its own SIGTERM handler (and a C-level crash handler) in place of the job's
    # (maskcore.stopping): a batch job or worker stopped by SIGTERM would then die with its
    # rows unwritten instead of finishing the work in hand. The job's handlers are put back.
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=options.local_cpus or default_workers(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    if threading.current_thread() is threading.main_thread():
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    return True


def _check_resources(resources: dict[str, float], options: RayOptions) -> None:
    """Refuse sizes that would hang: Ray waits forever for resources a cluster does not have."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if options.gpus_per_actor > 0 and gpus < options.gpus_per_actor * options.inference_actors:
        raise UsageError(
            f"--gpus-per-actor {options.gpus_per_actor:g} x {options.inference_actors} actor(s) "
            f"needs {options.gpus_per_actor * options.inference_actors:g} GPU(s); the Ray "
            f"cluster has {gpus:g}"
        )
    if options.cpus_per_actor * options.inference_actors >= cpus:
        raise UsageError(
            f"{options.inference_actors} inference actor(s) x {options.cpus_per_actor:g} CPU "
            f"would take all {cpus:g} CPUs of the Ray cluster and leave none to decode; "
            "use fewer actors or --cpus-per-actor"
        )


def classify_ray(
    refs: Iterable[Ref],
    source: Source,
    analyzer: Analyzer,
    emit: Callable[[dict[str, Any]], None],
    *,
    device: str = DEFAULTS.device,
    batch_size: int = DEFAULTS.batch_size,
    threshold: float = DEFAULTS.threshold,
    progress: Progress | None = None,
    row_extra: Callable[[Ref], dict[str, Any]] | None = None,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    stop: Callable[[], bool] | None = None,
    options: RayOptions = RayOptions(),
) -> tuple[StageTimes, dict[str, float]]:
    """Classify ``refs`` on Ray; rows reach ``emit`` in input order, as in the local runner.

    ``analyzer`` is the driver's (:meth:`maskcore.runners.RayRunner.open_analyzer`): every actor
    loads the same model file, precision and face stage it settled on, on ``device``. The other
    arguments are :func:`maskcore.pipeline.classify`'s (``row_extra`` travels to the actors).

    Returns:
        Stage times (the driver's view: waiting and writing) and the cluster's resources.

    Raises:
        UsageError: Ray is not installed, or the actor sizes do not fit the cluster.
    """
    ray = require_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timing lines are noise here
    started = _start(ray, options)
    times = StageTimes()
    try:
        resources = {k: float(v) for k, v in ray.cluster_resources().items()
                     if k in ("CPU", "GPU", "memory")}
        _check_resources(resources, options)
        items = [{"order": i, "source": r.source, "key": r.key, "etag": r.etag,
                  "size": r.size, "problem": r.problem} for i, r in enumerate(refs)]
        if not items:
            return times, resources
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows in input order, like the local runner
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(items)
        # Each decode task reserves room for the largest picture it may meet. That also keeps
        # Ray from fusing decoding into the inference actors (it fuses stages whose resource
        # requests are equal), which would leave a cluster's decoding to the few actors.
        spec, side = analyzer.engine.spec, analyzer.detector_spec
        ds = ds.map_batches(decode_batch, fn_kwargs={"source": source, "spec": spec,
                                                     "faces": side},
                            batch_size=CHUNK, batch_format="numpy", num_cpus=1,
                            memory=_decode_memory(spec, side))
        ds = ds.map_batches(
            Classifier,
            fn_constructor_kwargs={"model": str(analyzer.engine.path), "device": device,
                                   "precision": analyzer.engine.precision,
                                   "detector_precision": analyzer.detector_precision,
                                   "faces": analyzer.faces, "threshold": threshold,
                                   "row_extra": row_extra},
            compute=ray.data.ActorPoolStrategy(size=options.inference_actors),
            batch_size=batch_size, batch_format="numpy",
            num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor,
        )
        t_wait = time.perf_counter()
        for batch in ds.select_columns(["row"]).iter_batches(batch_size=batch_size,
                                                            batch_format="numpy"):
            times.wait += time.perf_counter() - t_wait
            t0 = time.perf_counter()
            rows = [json.loads(r) for r in batch["row"]]
            for row in rows:
                emit(row)
            if on_batch is not None:
                on_batch(rows)
            times.write += time.perf_counter() - t0
            times.pictures += len(rows)
            times.batches += 1
            if progress is not None:
                progress.update(len(rows))
            if stop is not None and stop():
                break
            t_wait = time.perf_counter()
        return times, resources
    finally:
        if started:
            ray.shutdown()
