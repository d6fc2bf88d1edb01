"""The Ray Data runner: the same stages as :mod:`maskcore.pipeline`, executed on a Ray cluster.

refs -> ``map_batches(decode_batch)`` CPU tasks (the shared :func:`~maskcore.decode.decode_chunk`)
-> ``map_batches(Classifier)`` on an actor pool (the shared :class:`~maskcore.engine.Engine`,
loaded once per actor; a GPU each with ``gpus_per_actor=1``) -> rows built by the shared
:func:`~maskcore.manifest.ok_row` / :func:`~maskcore.manifest.error_row`. Rows stream back to the
driver in input order (``preserve_order``), a batch at a time, so the driver never holds them all.

Nothing here decodes, preprocesses or formats a row itself: it only tells Ray where to run the
functions the local runner runs. On one machine the local runner is faster (see docs/SCALE.md);
this one is for clusters. Ray is optional (``pip install 'maskcore[ray]'``) and imported only here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskcore.decode import CHUNK, decode_chunk
from maskcore.errors import UsageError
from maskcore.manifest import error_row, ok_row
from maskcore.pipeline import StageTimes
from maskcore.pool import default_workers
from maskcore.preprocess import PreprocessSpec
from maskcore.progress import Progress
from maskcore.storage import Ref, Source

__all__ = ["Classifier", "RayOptions", "classify_ray", "decode_batch", "driver_engine",
           "require_ray"]

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


def driver_engine(model: str | None, device: str, runner: str, precision: str = "auto",
                  options: RayOptions | None = None) -> Any:
    """The engine a job's driver opens: with Ray it only reads the card (on the CPU), since the
    actors run the model on ``device``; without Ray it runs the model itself.

    With Ray the driver settles the precision for the actors: ``auto`` is float32 when they get
    GPUs (``--device cuda`` or ``--gpus-per-actor``), else what the CPU would run, so the model
    id the driver reports (and the worker's ledger uses) is the one the actors run.

    Raises:
        UsageError: ``runner`` is ``ray`` and Ray is not installed (checked before any work).
    """
    from maskcore.engine import Engine

    if runner == "ray":
        require_ray()
        on_gpu = device == "cuda" or (options is not None and options.gpus_per_actor > 0)
        if precision == "auto" and on_gpu:
            precision = "fp32"
        return Engine(model, device="cpu", precision=precision)  # type: ignore[arg-type]
    return Engine(model, device=device, precision=precision)  # type: ignore[arg-type]


def decode_batch(batch: dict[str, np.ndarray], source: Source, spec: PreprocessSpec
                 ) -> dict[str, np.ndarray]:
    """Ray task: read and preprocess a batch of refs with the shared decode task."""
    refs = [Ref(source=str(s), key=str(k), etag=str(e))
            for s, k, e in zip(batch["source"], batch["key"], batch["etag"], strict=True)]
    decoded, stacked, _ = decode_chunk(source, refs, spec)
    h, w = spec.size
    pixels = np.zeros((len(refs), h, w, 3), np.float32)
    for i, d in enumerate(decoded):
        if d.row >= 0:
            pixels[i] = stacked[d.row]
    return {
        "order": batch["order"],
        "source": batch["source"],
        "etag": batch["etag"],
        "ok": np.array([d.row >= 0 for d in decoded]),
        "sha256": np.array([d.sha256 for d in decoded], dtype=object),
        "width": np.array([d.width for d in decoded], dtype=np.int64),
        "height": np.array([d.height for d in decoded], dtype=np.int64),
        "error": np.array([d.error for d in decoded], dtype=object),
        "pixels": pixels,
    }


def _decode_memory(spec: PreprocessSpec) -> int:
    """Bytes a decode task may need: the largest allowed picture as RGBA, plus its batch."""
    h, w = spec.size
    return spec.max_pixels * 4 + CHUNK * h * w * 3 * 4 * 2 + (64 << 20)


class Classifier:
    """Ray actor: the shared engine, loaded once, turning decoded batches into rows (as JSON)."""

    def __init__(self, model: str, device: str, precision: str, threshold: float,
                 with_etag: bool) -> None:
        from maskcore.engine import Engine

        self.engine = Engine(model, device=device, precision=precision)  # type: ignore[arg-type]
        self.threshold = threshold
        self.with_etag = with_etag

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        proba = self.engine.predict(batch["pixels"][ok]) if ok.any() else None
        common = {"model_id": self.engine.model_id,
                  "preprocess_version": self.engine.spec.version}
        rows, k = [], 0
        for i in range(len(ok)):
            extra = {"etag": str(batch["etag"][i])} if self.with_etag else None
            source = str(batch["source"][i])
            if ok[i]:
                row = ok_row(source, proba[k], self.engine.classes, threshold=self.threshold,
                             sha256=str(batch["sha256"][i]), width=int(batch["width"][i]),
                             height=int(batch["height"][i]), extra=extra, **common)
                k += 1
            else:
                row = error_row(source, str(batch["error"][i]), sha256=str(batch["sha256"][i]),
                                extra=extra, **common)
            rows.append(json.dumps(row))
        return {"order": batch["order"], "row": np.array(rows, dtype=object)}


def _start(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=options.local_cpus or default_workers(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
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
    model: str,
    spec: PreprocessSpec,
    emit: Callable[[dict[str, Any]], None],
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    threshold: float = 0.5,
    progress: Progress | None = None,
    with_etag: bool = False,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    stop: Callable[[], bool] | None = None,
    options: RayOptions = RayOptions(),
) -> tuple[StageTimes, dict[str, float]]:
    """Classify ``refs`` on Ray; rows reach ``emit`` in input order, as in the local runner.

    ``model`` and ``precision`` should be what the driver's engine settled on
    (:func:`driver_engine`), so that every actor loads the same file.

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
        items = [{"order": i, "source": r.source, "key": r.key, "etag": r.etag}
                 for i, r in enumerate(refs)]
        if not items:
            return times, resources
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows in input order, like the local runner
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(items)
        # Each decode task reserves room for the largest picture it may meet. That also keeps
        # Ray from fusing decoding into the inference actors (it fuses stages whose resource
        # requests are equal), which would leave a cluster's decoding to the few actors.
        ds = ds.map_batches(decode_batch, fn_kwargs={"source": source, "spec": spec},
                            batch_size=CHUNK, batch_format="numpy", num_cpus=1,
                            memory=_decode_memory(spec))
        ds = ds.map_batches(
            Classifier,
            fn_constructor_kwargs={"model": model, "device": device, "precision": precision,
                                   "threshold": threshold,
                                   "with_etag": with_etag},
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
