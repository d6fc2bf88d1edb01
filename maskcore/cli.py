"""The ``maskcore`` command: a click group whose sub-commands live in ``jobs/``.

Sub-commands are imported only when they run (or when ``--help`` lists them), so ``maskcore batch``
never pays for, or needs, the training side's TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from maskcore.errors import MaskcoreError, UsageError

__all__ = ["Finite", "env_option", "main", "new_folder", "out_option", "run_command",
           "serving_options", "setup_logging"]

#: What an option decorates: a command's function, or a command already made (as click types it).
Decorated = TypeVar("Decorated", bound=Callable[..., Any] | click.Command)

#: Libraries whose INFO lines are not for the person running a job ("Found credentials in
#: environment variables", connection pool notes): only their warnings get through.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "filelock")


def setup_logging() -> None:
    """Our INFO lines on stderr, as plain messages; third parties' only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

# name -> "module:attribute" of a click command.
COMMANDS: dict[str, str] = {
    "audit": "jobs.audit:audit",
    "train": "jobs.train:train",
    "train-detector": "jobs.train_detector:train_detector",
    "quantize": "jobs.quantize:quantize",
    "pair": "jobs.pair:pair",
    "draw-masks": "jobs.draw_masks:draw_masks",
    "cut-faces": "jobs.cut_faces:cut_faces",
    "batch": "jobs.batch:batch",
    "worker": "jobs.worker:worker",
    "evaluate": "jobs.evaluate:evaluate",
    "report": "jobs.report:report",
}


class LazyGroup(click.Group):
    """A group that imports each sub-command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskcore")
def main() -> None:
    """maskcore: does the person in each picture wear a face mask?

    \b
    Train the classifier on folder-per-class and boxed datasets (audit, train,
    quantize, pair; draw-masks writes the drawn wrongly worn masks it learns
    from, cut-faces a boxed dataset's faces as close-ups to score on) and
    fine-tune the face detector on boxed ones (train-detector), then
    classify folders and S3 prefixes in bulk (batch) or keep watching a bucket
    (worker), and look at what a run found (report, evaluate).
    Every command has --help.
    """


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf (``FloatRange`` lets nan through, and a nan
    threshold or poll interval breaks a run quietly)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def env_option(*decls: str, env: str, **kwargs: Any) -> Callable[[Decorated], Decorated]:
    """A click option that also reads the environment variable ``env`` and shows it (and its
    default, where it has one) in ``--help``."""
    kwargs.setdefault("show_default", kwargs.get("default") is not None)
    return click.option(*decls, envvar=env, show_envvar=True, **kwargs)


def serving_options(fn: Any) -> Any:
    """The model and pipeline options that ``batch`` and ``worker`` share, each with its
    environment variable, declared once (the serverless handler reads the same variables through
    :func:`maskcore.settings.from_env`)."""
    from maskcore.settings import CHOICES, DEFAULTS, ENV, RANGES

    options = [
        env_option("--model", env=ENV["model"], default=None,
                   help="model.onnx (its model.json beside it) or their folder "
                        "[default: the bundled models/model.onnx]."),
        env_option("--device", env=ENV["device"], type=click.Choice(CHOICES["device"]),
                   default=DEFAULTS.device,
                   help="auto: CUDA when it really loads, else CPU. cuda: fail if CUDA is not "
                        "in use."),
        env_option("--precision", env=ENV["precision"], type=click.Choice(CHOICES["precision"]),
                   default=DEFAULTS.precision,
                   help="auto: the int8 variants of the classifier and the face detector on "
                        "CPU (where their cards list one), float32 on CUDA. Each variant has "
                        "its own model or detector id in the rows."),
        env_option("--faces", env=ENV["faces"], type=click.Choice(CHOICES["faces"]),
                   default=DEFAULTS.faces,
                   help="auto: find every face, classify each, a row per face in faces.jsonl "
                        "and the picture's verdict (its most serious face); a picture with no "
                        "face found is classified whole. off: classify every picture whole."),
        env_option("--batch-size", env=ENV["batch_size"], default=DEFAULTS.batch_size,
                   type=click.IntRange(*RANGES["batch_size"][1:]),
                   help="Pictures per inference call."),
        click.option("--workers", type=click.IntRange(0, 256), default=None,
                     envvar="MASKCORE_WORKERS", show_envvar=True,
                     help="Decode processes [default: all cores; 0 decodes in threads]."),
        env_option("--threshold", env=ENV["threshold"], default=DEFAULTS.threshold,
                   type=Finite(*RANGES["threshold"][1:]),
                   help="A face or picture whose top probability is below this is labelled "
                        "'uncertain'."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def ray_options_decorator(fn: Any) -> Any:
    """The runner options that ``batch`` and ``worker`` share."""
    from maskcore.runners import RUNNERS

    options = [
        click.option("--runner", type=click.Choice(RUNNERS), default=RUNNERS[0],
                     show_default=True, envvar="MASKCORE_RUNNER", show_envvar=True,
                     help="local: a process pool on this machine. ray: the same stages on a Ray "
                          "cluster (Ray Data), for more than one machine."),
        click.option("--ray-address", default=None, envvar="RAY_ADDRESS", show_envvar=True,
                     help="Ray cluster to join ('auto' or ray://host:port) [default: start Ray "
                          "here, in-process]."),
        click.option("--inference-actors", default=1, show_default=True, type=click.IntRange(1),
                     envvar="MASKCORE_INFERENCE_ACTORS", show_envvar=True,
                     help="Ray: actors running the model (each loads it once)."),
        click.option("--cpus-per-actor", default=1.0, show_default=True,
                     type=click.FloatRange(0.1), envvar="MASKCORE_CPUS_PER_ACTOR",
                     show_envvar=True, help="Ray: CPUs reserved per inference actor."),
        click.option("--gpus-per-actor", default=0.0, show_default=True, type=click.FloatRange(0),
                     envvar="MASKCORE_GPUS_PER_ACTOR", show_envvar=True,
                     help="Ray: GPUs per inference actor (1 gives each a GPU and CUDA)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def ray_options_from(args: dict[str, Any]) -> Any:
    """RayOptions from the parsed runner options (Ray itself is not imported here)."""
    from maskcore.ray_runner import RayOptions

    return RayOptions(address=args.get("ray_address"),
                      inference_actors=args.get("inference_actors", 1),
                      cpus_per_actor=args.get("cpus_per_actor", 1.0),
                      gpus_per_actor=args.get("gpus_per_actor", 0.0))


#: The --out of the commands that write pictures to score on (draw-masks and cut-faces): a new
#: folder, so that a second run cannot mix its pictures into a first's.
out_option = click.option("--out", required=True,
                          type=click.Path(file_okay=False, path_type=Path),
                          help="A new folder for the pictures, in class folders.")


def new_folder(out: Path) -> None:
    """Refuse an ``out`` that already holds files (see :data:`out_option`).

    Raises:
        UsageError: it does.
    """
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: give a new folder")


def run_command(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the library; turn the package's own errors into one stderr line and exit code 2.

    Per-picture failures never get here (they are rows). What does is a run-level fault: a
    missing model, an unreadable bucket, options that cannot work on this machine.
    """
    try:
        return fn(*args, **kwargs)
    except MaskcoreError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
