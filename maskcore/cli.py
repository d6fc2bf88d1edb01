"""The ``maskcore`` command: a click group whose sub-commands live in ``jobs/``.

Sub-commands are imported only when they run (or when ``--help`` lists them), so ``maskcore batch``
never pays for, or needs, the training side's TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from maskcore.errors import MaskcoreError

__all__ = ["main", "run_command"]

# name -> "module:attribute" of a click command.
COMMANDS: dict[str, str] = {
    "audit": "jobs.audit:audit",
    "train": "jobs.train:train",
    "batch": "jobs.batch:batch",
    "worker": "jobs.worker:worker",
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
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskcore")
def main() -> None:
    """maskcore: does the person in each picture wear a face mask?

    \b
    Train a model on a folder-per-class dataset (train, audit), then classify
    folders and S3 prefixes in bulk (batch) or keep watching a bucket (worker).
    Every command has --help.
    """


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
