"""The report in a real headless Chromium, the boxes where the faces are, and --annotate."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskcore.cli import main
from maskcore.draw import CLASS_COLOURS
from maskcore.report import write_report
from maskcore.results import FLAGGED, open_results
from tests.browser import INSTALL_HINT, Browser, find_chromium
from tests.conftest import EXAMPLES, copy_pictures
from tests.helpers import BAD_INPUTS

HOSTILE = "<img src=x onerror=console.error(1)>.jpg"


def cli(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def run(tmp_path_factory, face_pictures, model_path) -> Path:
    """A batch run over close-ups, street pictures and broken files."""
    root = tmp_path_factory.mktemp("report")
    pictures = root / "in"
    copy_pictures(face_pictures, pictures / "closeups")
    copy_pictures(sorted((EXAMPLES / "street").glob("*.jpg")), pictures / "street")
    for name in ("truncated_body", "text"):
        (pictures / f"broken_{name}.jpg").write_bytes(BAD_INPUTS[name])
    # A name that is markup: escaped, it is text; if not, it would run (a console error).
    (pictures / HOSTILE).write_bytes((EXAMPLES / "without_mask_1.jpg").read_bytes())
    out = root / "results"
    cli("batch", str(pictures), "--out", str(out), "--model", str(model_path), "--no-progress")
    return out


def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)  # CI installs it: missing there is a fault, not a skip
        pytest.skip(INSTALL_HINT)
    return path


def test_the_report_loads_in_a_browser_with_every_flagged_picture(run, tmp_path):
    rows = [json.loads(x) for x in (run / "manifest.jsonl").read_text().splitlines()]
    flagged = sum(r.get("label") in FLAGGED for r in rows)
    errors = sum(r["status"] == "error" for r in rows)
    assert flagged and errors  # the run has something of each to show
    page_path = tmp_path / "report.html"
    out = cli("report", str(run), "--out", str(page_path))
    assert f"{flagged} flagged of {len(rows)} pictures" in out

    with Browser(chromium()) as browser:
        page = browser.open(page_path.as_uri())
        assert page.evaluate("document.querySelectorAll('.card').length") == len(rows)
        assert page.evaluate("document.querySelectorAll('.card.flagged').length") == flagged
        # flagged pictures come first
        groups = page.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.group)")
        assert groups[:flagged] == ["flagged"] * flagged
        # every ok picture got its thumbnail from the source
        assert page.evaluate("document.querySelectorAll('.card img').length") == len(rows) - errors
        # the filter shows the flagged ones alone
        shown = page.evaluate(
            "(() => { const g = document.getElementById('group'); g.value = 'flagged';"
            " g.dispatchEvent(new Event('change'));"
            " return [...document.querySelectorAll('.card')].filter(c => !c.hidden).length })()")
        assert shown == flagged
        page.evaluate("document.querySelector('[data-tab=tab-least]').click()")
        assert page.evaluate("document.getElementById('tab-least').hidden") is False
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
        assert page.evaluate(f"document.body.textContent.includes({json.dumps(HOSTILE)})")
        assert page.drain() == []  # no console error, exception or failed load
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500  # not blank


def test_a_large_run_is_capped_and_says_so(run, tmp_path):
    results = open_results(str(run))
    stats = write_report(results, tmp_path / "r.html", max_cards=3)
    page = (tmp_path / "r.html").read_text()
    assert stats.capped and stats.cards == 3 and page.count('<article class="card') == 3
    assert f"Showing 3 of {len(results.rows)} pictures" in page
    assert "<script src" not in page and "http" not in page.split("<main>")[1]  # self-contained


def test_boxes_are_drawn_where_the_face_is(tmp_path, model_path):
    """A face pasted at a known place in a picture stored sideways (EXIF orientation 6)."""
    face = Image.open(EXAMPLES / "without_mask_4.jpg").convert("RGB")
    face.thumbnail((220, 220))
    y, x = np.mgrid[0:600, 0:900]
    upright = Image.fromarray(np.stack([x * 255 // 899, y * 255 // 599, np.full_like(x, 128)],
                                       axis=-1).astype(np.uint8))  # smooth: JPEG keeps it
    left, top = 600, 200
    upright.paste(face, (left, top))
    region = (left, top, left + face.width, top + face.height)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show": stored turned the other way
    folder = tmp_path / "in"
    folder.mkdir()
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", quality=95,
                                                      exif=exif)
    out, drawn = tmp_path / "out", tmp_path / "drawn"
    cli("batch", str(folder), "--out", str(out), "--model", str(model_path), "--no-progress",
        "--annotate", str(drawn))
    faces = [json.loads(x) for x in (out / "faces.jsonl").read_text().splitlines()]
    assert len(faces) == 1 and faces[0]["label"] == "without_mask"
    f = faces[0]
    # The box is in the upright picture's pixels, on the pasted face.
    assert region[0] - 5 <= f["x0"] < f["x1"] <= region[2] + 5
    assert region[1] - 5 <= f["y0"] < f["y1"] <= region[3] + 5
    assert (f["x1"] - f["x0"]) * (f["y1"] - f["y0"]) > 0.2 * face.width * face.height

    copy = np.asarray(Image.open(drawn / "sideways.jpg").convert("RGB")).astype(int)
    assert copy.shape == (600, 900, 3)  # upright, full size
    red = np.array(Image.new("RGB", (1, 1), CLASS_COLOURS["without_mask"]).getpixel((0, 0)))
    x0, y0, x1, y1 = (round(f[k]) for k in ("x0", "y0", "x1", "y1"))
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    for x, y in ((x0, ym), (x1, ym), (xm, y1)):  # the left, right and bottom edges
        patch = copy[y - 3:y + 4, x - 3:x + 4].reshape(-1, 3)
        assert np.abs(patch - red).sum(axis=1).min() < 60, (x, y)
    # and away from the face nothing is drawn (the background only went through JPEG twice)
    away = copy[:150, :400]
    assert np.abs(away - np.asarray(upright)[:150, :400]).mean() < 4
    assert np.abs(away.reshape(-1, 3) - red).sum(axis=1).min() > 100


def test_a_workers_results_in_a_bucket_make_a_report_in_the_bucket(s3_client, tmp_path,
                                                                    model_path, face_pictures):
    s3_client.create_bucket(Bucket="report-test")
    for p in face_pictures[:4]:
        s3_client.put_object(Bucket="report-test", Key=f"incoming/{p.name}", Body=p.read_bytes())
    # The results lie inside the source (the bucket root): the report must not become a picture.
    worker = ["worker", "--source", "s3://report-test/", "--results", "s3://report-test/results/",
              "--once", "--model", str(model_path), "--workers", "0"]
    cli(*worker, "--report")  # the nightly run draws its report itself
    assert s3_client.head_object(Bucket="report-test", Key="results/report.html")
    s3_client.delete_object(Bucket="report-test", Key="results/report.html")
    out = cli("report", "s3://report-test/results/", "--annotate", str(tmp_path / "drawn"))
    assert "Open s3://report-test/results/report.html" in out
    obj = s3_client.get_object(Bucket="report-test", Key="results/report.html")
    assert obj["ContentType"].startswith("text/html")
    page = obj["Body"].read().decode()
    assert page.count('<article class="card') == 4
    assert page.count("data:image/jpeg;base64") >= 4  # thumbnails read back from the bucket
    flagged = list((tmp_path / "drawn").rglob("*.jpg"))
    assert f"{len(flagged)} annotated picture(s)" in out
    assert all(p.relative_to(tmp_path / "drawn").parts[0] == "report-test" for p in flagged)
    # report.html is the results', not a picture: the next nightly pass has nothing to do
    assert "this run classified 0" in cli(*worker, "--report")
    assert s3_client.head_object(Bucket="report-test", Key="results/report.html")
