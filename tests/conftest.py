"""Shared fixtures: a real S3-compatible server over HTTP, the bundled model, sample pictures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = ROOT / "models" / "model.onnx"
EXAMPLES = ROOT / "examples"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A passing run's temporary folders go (``tmp_path_retention_policy``), but pytest keeps
    their per-user parent (``/tmp/pytest-of-<user>``) even when it is left empty: remove it then,
    so that a run leaves nothing behind. Runs after pytest's own clean-up (trylast)."""
    factory = session.config._tmp_path_factory
    basetemp = factory._basetemp  # None when no test used tmp_path
    if basetemp is not None and factory._given_basetemp is None:  # not a --basetemp's parent
        try:
            basetemp.parent.rmdir()  # only if empty: a failed run's folders, or another run's, stay
        except OSError:
            pass


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto in server mode on 127.0.0.1 (a free port), spoken to over real HTTP by boto3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The standard AWS variables pointed at the local server; yields its URL.

    Each test gets a clean server state (moto's reset endpoint), so buckets do not leak across.
    """
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST"))
    for key, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield s3_server


@pytest.fixture
def s3_client(s3: str):
    """A plain boto3 client on the local server, for setting up and reading back."""
    import boto3

    return boto3.client("s3", endpoint_url=s3)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled model: a real model trained on the face-mask dataset."""
    if not BUNDLED_MODEL.is_file():
        pytest.fail(f"the bundled model is missing: {BUNDLED_MODEL} (run make train, see README)")
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def face_pictures() -> list[Path]:
    """A few real face pictures: from the shared dataset when present, else examples/."""
    pics = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if EXAMPLES.is_dir() else []
    if SHARED_DATA.is_dir():
        for cls in ("with_mask", "without_mask"):
            pics += sorted((SHARED_DATA / cls).iterdir())[200:206]
    if not pics:
        pytest.skip("no face pictures: neither examples/ nor the shared dataset is here")
    return pics


@pytest.fixture(autouse=True)
def _no_stray_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASKCORE_MODEL", raising=False)


def copy_pictures(paths: list[Path], dest: Path) -> list[Path]:
    """Copy pictures into ``dest`` with unique names."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        target = dest / f"{i:03d}_{p.name}"
        shutil.copyfile(p, target)
        out.append(target)
    return out


os.environ.setdefault("MASKCORE_TEST", "1")


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """After the whole suite, no process started by the tests may still run."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    # multiprocessing's resource tracker is one per process by design and ends with the test
    # process itself (it reads a pipe until the last holder closes it): not left behind.
    left = [p for p in me.children(recursive=True) if p.pid not in before
            and "resource_tracker" not in " ".join(_cmdline(p))]
    _, alive = psutil.wait_procs(left, timeout=15)
    assert not alive, f"processes left behind by the tests: {[(p.pid, _cmdline(p)) for p in alive]}"


def _cmdline(p: object) -> list[str]:
    try:
        return p.cmdline()  # type: ignore[attr-defined, no-any-return]
    except Exception:  # noqa: BLE001 - gone meanwhile
        return []
