"""The inference engine: one ONNX Runtime session, loaded once, batches in, probabilities out.

Everything the engine needs to know about the model comes from its card (classes, input size,
preprocessing spec and version), checked against the ONNX file's own metadata and sha256. CUDA is
used only when its execution provider really loads: ``get_available_providers()`` lists CUDA in
every onnxruntime-gpu install, GPU or not, so the engine asks the created session instead.

Precision: where the card lists an int8 variant (``model.int8.onnx``), ``auto`` runs it on the
CPU, where int8 convolutions (VNNI) make this model about 2.3 times faster than float32 (same
label on 598 of 599 test pictures), and keeps float32 on CUDA. The two files have different model ids, so
every row says which one produced it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from maskcore.card import ModelCard, file_sha256, model_id_of
from maskcore.errors import ModelError, UsageError
from maskcore.preprocess import PREPROCESS_VERSION, PreprocessSpec
from maskcore.settings import ENV

__all__ = ["DEFAULT_MODEL", "Device", "Engine", "Precision", "Variant", "open_session",
           "open_variant", "resolve_model_path"]

log = logging.getLogger(__name__)

# ONNX Runtime's telemetry is off: a batch job has no business reporting home (on Windows it
# would write event traces; elsewhere the call is a no-op, and says so by existing).
if hasattr(ort, "disable_telemetry_events"):
    ort.disable_telemetry_events()

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "int8"]
#: The variant a session holds, once ``auto`` is resolved.
Variant = Literal["fp32", "int8"]

#: The bundled model, trained on the shared face-mask dataset (see docs/MODEL.md).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "model.onnx"

#: On a CPU a batch runs in slices of this many inputs: the activations of a small slice stay in
#: the CPU's caches. Measured with the int8 classifier on one thread (how the decode processes
#: run it): 2,440 face crops a second in slices of 16 against 2,150 in calls of 64 and 1,650 of
#: 256, whole pictures 1,190 against 1,070; float32 and two threads lose nothing.
CPU_SLICE = 16

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """The model to use: the one given, else ``$MASKCORE_MODEL``, else the bundled one.

    A folder is taken to hold ``model.onnx``. Raises ModelError when the file is not there.
    """
    chosen = model or os.environ.get(ENV["model"]) or DEFAULT_MODEL
    path = Path(chosen).expanduser()
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    return path


def _nvidia_device_present() -> bool:
    """Whether this machine shows an NVIDIA device at all (Linux device nodes or driver).

    Without one, trying the CUDA provider only prints library-loading errors; elsewhere than
    Linux, assume there may be one and let the session decide.
    """
    if not Path("/dev").is_dir() or os.name != "posix":
        return True
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


class Engine:
    """An ONNX Runtime session for one model, ready for batches.

    Args:
        model: path to ``model.onnx`` (its ``model.json`` card must sit beside it), a folder
            holding both, its int8 variant's file, or None for ``$MASKCORE_MODEL`` / the
            bundled model.
        device: ``auto`` (CUDA if it really loads, else CPU), ``cpu``, or ``cuda`` (fail if
            CUDA cannot be used).
        threads: ONNX Runtime intra-op threads on CPU; None lets it use every core.
        precision: ``auto`` (the int8 variant on CPU when the card lists one, float32
            otherwise), ``fp32`` or ``int8``.

    Attributes:
        path: the ONNX file actually loaded.
        device: ``cpu`` or ``cuda``, as the session really runs.
        precision: ``fp32`` or ``int8``, the variant actually loaded.

    Raises:
        ModelError: missing or unreadable model or card, a card that does not match the file,
            or a preprocessing version this code does not implement.
        UsageError: ``device="cuda"`` where the CUDA provider cannot be used, or a bad option.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: Device = "auto",
        threads: int | None = None,
        precision: Precision = "auto",
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"device must be auto, cpu or cuda, not {device!r}")
        if precision not in ("auto", "fp32", "int8"):
            raise UsageError(f"precision must be auto, fp32 or int8, not {precision!r}")
        given = resolve_model_path(model)
        self.card = ModelCard.read(given)
        # The float32 file is the one named (whatever its name), unless the int8 one was named.
        self._fp32_file = given.name
        if self.card.int8 and given.name == self.card.int8["onnx_file"]:
            if precision == "fp32":
                raise UsageError(f"{given} is the int8 variant; for float32 use "
                                 f"{given.with_name(self.card.onnx_file)}")
            precision = "int8"
            self._fp32_file = self.card.onnx_file
        self._folder = given.parent
        self._threads = threads
        self.session, self.device, self.precision = self._open(device, precision)
        self.provider = self.session.get_providers()[0]
        self._check_metadata()
        self._check_io()

    @property
    def classes(self) -> list[str]:
        """Class names, in output order."""
        return self.card.classes

    @property
    def spec(self) -> PreprocessSpec:
        """The preprocessing this model was trained with."""
        return self.card.preprocess

    @property
    def model_id(self) -> str:
        """The first 12 hex digits of the loaded ONNX file's sha256."""
        return model_id_of(self.sha256)

    @property
    def has_whole_branch(self) -> bool:
        """Whether whole pictures run through a network of their own (see ``maskcore pair``)."""
        return self.card.whole_input is not None

    def predict(self, batch: np.ndarray, *, whole: bool = False) -> np.ndarray:
        """Probabilities (N, classes) for a float32 batch (N, H, W, 3) from the shared preprocessing.

        Args:
            batch: the inputs, all of one kind.
            whole: the inputs are whole pictures, not face crops. A model with a whole-picture
                branch runs them through it; any other model ignores this.
        """
        if batch.ndim != 4 or batch.shape[1:] != (*self.spec.size, 3):
            raise ValueError(f"batch of shape {batch.shape} does not fit input {self.spec.size}")
        n = len(batch)
        if self.device == "cpu" and n > CPU_SLICE:
            return np.concatenate([self.predict(batch[i:i + CPU_SLICE], whole=whole)
                                   for i in range(0, n, CPU_SLICE)])
        if self.device == "cuda" and n:
            # Batches padded to a power of two (64 at least): a CUDA session plans and allocates
            # for every new input shape, and the number of faces in a batch is never the same
            # twice.
            size = max(64, 1 << (n - 1).bit_length())
            if size != n:
                batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]),
                                                        batch.dtype)])
        feed = {self.card.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.card.whole_input is not None:
            feed[self.card.whole_input] = np.array(whole)
        proba: np.ndarray = self.session.run([self.card.output_name], feed)[0][:n]
        return proba

    # --- set-up -----------------------------------------------------------------------------

    def _open(self, device: Device, precision: Precision
              ) -> tuple[ort.InferenceSession, str, Variant]:
        """The session, where it runs and which variant it holds."""
        listed = self._folder / self.card.int8["onnx_file"] if self.card.int8 else None
        session, where, variant, _ = open_variant(device, precision, self._select, listed,
                                                  self._threads)
        return session, where, variant

    def _select(self, precision: Variant) -> Path:
        """Point ``path`` and ``sha256`` at a variant's file, checked against the card; returns
        the path."""
        name, expected = self.card.variant(precision)
        path = self._folder / (self._fp32_file if precision == "fp32" else name)
        if not path.is_file():
            raise ModelError(f"model not found: {path}")
        actual = file_sha256(path)
        if expected and expected != actual:
            raise ModelError(
                f"{path} does not match its card (sha256 {actual[:12]}, card says "
                f"{expected[:12]}): the card belongs to another model"
            )
        self.path, self.sha256 = path, actual
        return path

    def _check_metadata(self) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        version = meta.get("preprocess_version")
        if version is not None and version != PREPROCESS_VERSION:
            raise ModelError(
                f"{self.path} was trained with preprocessing {version!r}; this code implements "
                f"{PREPROCESS_VERSION!r}"
            )
        if "classes" in meta and json.loads(meta["classes"]) != self.card.classes:
            raise ModelError(f"{self.path}: classes in the ONNX metadata differ from the card")

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.card.input_name not in inputs or self.card.output_name not in outputs:
            raise ModelError(
                f"{self.path}: expected input {self.card.input_name!r} and output "
                f"{self.card.output_name!r}, found {sorted(inputs)} and {sorted(outputs)}"
            )
        flag = self.card.whole_input
        if flag is not None and (flag not in inputs or inputs[flag].type != "tensor(bool)"
                                 or inputs[flag].shape):
            raise ModelError(f"{self.path}: the card names a whole-picture input {flag!r}, but "
                             f"the file has no such boolean scalar input")
        unknown = sorted(set(inputs) - {self.card.input_name, flag})
        if unknown:
            raise ModelError(f"{self.path}: inputs {unknown} are not in its card")
        shape = inputs[self.card.input_name].shape
        if len(shape) != 4 or list(shape[1:]) != [*self.spec.size, 3]:
            raise ModelError(f"{self.path}: input shape {shape} does not match the card's "
                             f"{[*self.spec.size, 3]}")


# --- sessions, shared by the classifier and the face detector ---------------------------------


def open_session(path: Path, device: Device = "auto", threads: int | None = None
                 ) -> tuple[ort.InferenceSession, str]:
    """An ONNX Runtime session for ``path`` and where it really runs (``cuda`` or ``cpu``).

    Raises:
        UsageError: ``device="cuda"`` where the CUDA provider cannot be used.
        ModelError: the file cannot be loaded.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu or cuda, not {device!r}")
    if device in ("auto", "cuda") and cuda_possible(device):
        session = _try_cuda(path, threads)
        if session is not None:
            return session, "cuda"
        _no_cuda(device)
    return _cpu_session(path, threads), "cpu"


def open_variant(device: Device, precision: Precision, locate: Callable[[Variant], Path],
                 int8_file: Path | None, threads: int | None = None
                 ) -> tuple[ort.InferenceSession, str, Variant, Path]:
    """The precision rule, written once for the classifier and the face detector: a session
    for the variant of a model that ``device`` and ``precision`` call for.

    On CUDA float32 is the fast path, so ``auto`` keeps it there; on a CPU ``auto`` runs the
    int8 variant when the model has one (its card lists it and the file is there), where int8
    convolutions (VNNI) are the cheaper ones.

    Args:
        locate: the checked file of a variant (raises ModelError when it is missing or does
            not match its card).
        int8_file: the int8 variant's file as the card lists it; None when it lists none.

    Returns:
        The session, where it runs (``cuda`` or ``cpu``), the variant and its file.
    """
    if precision not in ("auto", "fp32", "int8"):
        raise UsageError(f"precision must be auto, fp32 or int8, not {precision!r}")
    if device in ("auto", "cuda") and cuda_possible(device):
        gpu_variant: Variant = "int8" if precision == "int8" else "fp32"
        path = locate(gpu_variant)
        session = _try_cuda(path, threads)
        if session is not None:
            return session, "cuda", gpu_variant, path
        _no_cuda(device)
    variant: Variant = "fp32" if precision == "auto" else precision
    if precision == "auto" and int8_file is not None:
        if int8_file.is_file():
            variant = "int8"
        else:
            log.info("the card lists %s but it is not there; running float32", int8_file.name)
    path = locate(variant)
    return _cpu_session(path, threads), "cpu", variant, path


def cuda_possible(device: Device) -> bool:
    """Whether trying CUDA makes sense; ``device="cuda"`` on a build without it is refused."""
    if _CUDA in ort.get_available_providers():
        return True
    if device == "cuda":
        raise UsageError(
            "--device cuda: this onnxruntime build has no CUDA execution provider "
            f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
        )
    return False


def _no_cuda(device: Device) -> None:
    """CUDA was tried and did not load: an error when asked for, a note under auto."""
    if device == "cuda":
        raise UsageError(
            "--device cuda: the CUDA execution provider did not load (no GPU, or the "
            "CUDA 12/13 and cuDNN 9 libraries onnxruntime-gpu needs are missing); "
            "use --device auto or cpu"
        )
    log.debug("CUDA execution provider not usable here; running on CPU")


def _options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def _cpu_session(path: Path, threads: int | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), _options(threads), providers=[_CPU])
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise ModelError(f"cannot load {path}: {exc}") from exc


def _try_cuda(path: Path, threads: int | None) -> ort.InferenceSession | None:
    """A CUDA session, or None when the CUDA provider does not really load."""
    if not _nvidia_device_present():
        return None
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and importlib.util.find_spec("nvidia") is not None:
        try:  # finds CUDA and cuDNN from the nvidia-* pip packages where they are installed
            preload()
        except Exception:  # noqa: BLE001 - absence of the libraries is the normal CPU case
            pass
    quiet = _options(threads)
    quiet.log_severity_level = 4  # the failed provider load is expected on CPU machines
    ort.set_default_logger_severity(3)
    try:
        # Heuristic convolution plans: an exhaustive search runs again for every new input
        # shape, and batch sizes (faces per batch, the last batch of a run) vary.
        cuda = (_CUDA, {"cudnn_conv_algo_search": "HEURISTIC"})
        session = ort.InferenceSession(str(path), quiet, providers=[cuda, _CPU])
    except Exception:  # noqa: BLE001
        return None
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
    return session if session.get_providers()[0] == _CUDA else None
