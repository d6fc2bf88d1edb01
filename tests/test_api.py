"""The package's public surface and error tree, and the two ways to start the command."""

from __future__ import annotations

import subprocess
import sys

import maskcore
from maskcore import errors


def test_public_names_exist():
    for name in maskcore.__all__:
        assert hasattr(maskcore, name), name


def test_every_error_is_a_maskcore_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, maskcore.MaskcoreError)


def test_python_dash_m_and_the_console_script_agree():
    a = subprocess.run([sys.executable, "-m", "maskcore", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert a.returncode == 0 and "batch" in a.stdout and "worker" in a.stdout
    b = subprocess.run([sys.executable, "-m", "maskcore", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert b.returncode == 0 and "0.1.0" in b.stdout


def test_classify_picture_gives_the_batch_jobs_rows(tmp_path, model_path):
    """The README's Python example: one call, the same rows as the batch job writes."""
    import json

    from click.testing import CliRunner

    from maskcore.cli import main
    from tests.conftest import EXAMPLES

    picture = EXAMPLES / "street" / "street_0.jpg"
    models = maskcore.open_analyzer(str(model_path))
    result = maskcore.classify_picture(picture, models)
    r = CliRunner().invoke(main, ["batch", str(picture), "--out", str(tmp_path),
                                  "--model", str(model_path), "--no-progress"])
    assert r.exit_code == 0, r.output

    def stable(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "processed_at"}

    [row] = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    faces = [json.loads(x) for x in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert stable(result.row) == stable(row)
    assert [stable(f) for f in result.faces] == [stable(f) for f in faces]
    assert result.label == row["label"] and len(result.faces) == row["faces"] > 1
    # bytes in, and a picture that is not one: an error row, not an exception
    same = maskcore.classify_picture(picture.read_bytes(), models, name=picture.name)
    assert stable(same.row) == stable(row)
    broken = maskcore.classify_picture(b"not a picture", models)
    assert broken.label == "" and broken.error and broken.row["error_kind"] == "decode"
