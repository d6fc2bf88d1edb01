"""``maskcore report``: one self-contained HTML page a person can look at after a run.

The page holds the run's summary (pictures, faces, per class, verdicts, errors, models, when), a
score histogram per class, a gallery of thumbnails with every face boxed in its class colour
(flagged pictures first, then uncertain ones, errors, the rest; filters by group and label), the
least confident faces, and the errors. Everything is inside the one file (thumbnails as data
URIs, no script or font from elsewhere), so it opens from a disk or a bucket with no server.

A run of 100,000 pictures must still give a page that opens: the gallery holds at most
``max_cards`` pictures (:data:`MAX_CARDS`), taken in the order above, and says so; the counts and
histograms always cover the whole run.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from maskcore.draw import (
    CLASS_COLOURS,
    LABEL_TEXT,
    colour_of,
    draw_faces,
    encode_jpeg,
    face_crop,
)
from maskcore.errors import MaskcoreError
from maskcore.preprocess import decode
from maskcore.results import FLAGGED, GROUPS, REPORT_NAME, RunResults, group_of
from maskcore.storage import S3Store, parse_s3_url

__all__ = ["MAX_CARDS", "ReportStats", "publish_report", "write_report"]

#: Pictures in the gallery at most (flagged first); the page says when there were more.
MAX_CARDS = 400
#: Least confident faces (or pictures, with ``--faces off``) shown on their own.
LEAST_CONFIDENT = 60
#: Error rows listed at most.
MAX_ERRORS = 500
#: Longest side of a gallery thumbnail, and side of a face crop, in pixels.
THUMB_PX = 256
CROP_PX = 96
#: Histogram bins over the top score.
BINS = 20
#: Thumbnails between two calls of ``progress``.
PROGRESS_EVERY = 100


@dataclass(frozen=True)
class ReportStats:
    """What a report holds, for the command's last line and for tests."""

    path: Path
    pictures: int
    cards: int
    flagged: int
    capped: bool
    unavailable: int  # cards whose source picture could not be read (shown without a picture)
    seconds: float


def write_report(results: RunResults, out: Path, *, max_cards: int = MAX_CARDS,
                 progress: Callable[[int], None] | None = None) -> ReportStats:
    """Write the HTML report of ``results`` to ``out``.

    Args:
        results: a run read by :func:`maskcore.results.open_results`.
        out: the HTML file to write (its folder is created).
        max_cards: pictures in the gallery at most.
        progress: called with the number of thumbnails made so far, every
            :data:`PROGRESS_EVERY`.
    """
    t0 = time.monotonic()
    rows = results.rows
    groups = [group_of(r, results.faces_of(r["source"])) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (GROUPS.index(groups[i]),
                                                    -_severity(rows[i]), rows[i]["source"]))
    shown = order[:max_cards]
    faces = [f for fs in results.faces.values() for f in fs]
    # What the histograms and the least confident tab score: the faces, or the pictures of a
    # run without the face stage.
    scored = faces or [r for r in rows if r["status"] == "ok"]

    def card(i: int) -> tuple[str, bool]:
        row = rows[i]
        image = _thumbnail(results, row) if row["status"] == "ok" else None
        return (_card(row, results.faces_of(row["source"]), groups[i], image),
                row["status"] == "ok" and image is None)

    with ThreadPoolExecutor(4) as pool:
        cards = []
        unavailable = 0
        for n, (text, missing) in enumerate(pool.map(card, shown), 1):
            cards.append(text)
            unavailable += missing
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(n)
        least_items = sorted(scored, key=lambda f: (float(f["score"]), f["source"]))
        least = list(pool.map(lambda f: _least_card(results, f), least_items[:LEAST_CONFIDENT]))
    counts = Counter(groups)
    page = _page(results, counts, faces, scored, cards, least, capped=len(rows) > len(shown),
                 shown=len(shown))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return ReportStats(path=out, pictures=len(rows), cards=len(shown), flagged=counts["flagged"],
                       capped=len(rows) > len(shown), unavailable=unavailable,
                       seconds=time.monotonic() - t0)


def publish_report(results: RunResults, out: str | None = None, *, max_cards: int = MAX_CARDS,
                   progress: Callable[[int], None] | None = None) -> tuple[ReportStats, str]:
    """Write the report to a file or an ``s3://`` key; returns its stats and where it went.

    ``out`` None puts it beside the manifest (:data:`~maskcore.results.REPORT_NAME` in the
    results folder or prefix). An ``s3://`` target is written locally first, then uploaded
    whole as ``text/html``, so a browser opens it straight from the bucket.

    Raises:
        StorageError: the target cannot be written.
    """
    target = out or _join(results.location, REPORT_NAME)
    if not target.startswith("s3://"):
        return write_report(results, Path(target), max_cards=max_cards, progress=progress), target
    if target.endswith("/") or not parse_s3_url(target).prefix:  # a prefix: the default name
        target = _join(target, REPORT_NAME)
    loc = parse_s3_url(target)
    with tempfile.TemporaryDirectory(prefix="maskcore-report-") as tmp:
        stats = write_report(results, Path(tmp) / REPORT_NAME, max_cards=max_cards,
                             progress=progress)
        S3Store(f"s3://{loc.bucket}/").put(loc.prefix, stats.path.read_bytes(),
                                           "text/html; charset=utf-8")
    return stats, target


def _join(location: str, name: str) -> str:
    return location.rstrip("/") + "/" + name


def _severity(row: dict[str, Any]) -> float:
    """Within a group: more flagged faces first, then the surer verdicts."""
    counts = row.get("face_counts") or {}
    return float(sum(counts.get(c, 0) for c in FLAGGED)) + float(row.get("score") or 0.0) / 10


def _thumbnail(results: RunResults, row: dict[str, Any]) -> str | None:
    """The picture with its faces drawn, as a data URI; None when it cannot be read now."""
    try:
        picture = decode(results.read_source(row["source"]), draft=THUMB_PX)
    except MaskcoreError:
        return None
    return _data_uri(draw_faces(picture, results.faces_of(row["source"]), longest=THUMB_PX), 78)


def _data_uri(image: Image.Image, quality: int) -> str:
    """A JPEG of ``image``, inline in the page."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, quality)).decode()


def _least_card(results: RunResults, item: dict[str, Any]) -> str:
    """A face (or, without the face stage, a picture) of the least confident tab."""
    uri = None
    try:
        picture = decode(results.read_source(item["source"]),
                         draft=None if "x0" in item else THUMB_PX)
        image = face_crop(picture, item, CROP_PX) if "x0" in item else \
            draw_faces(picture, [], longest=CROP_PX)
        uri = _data_uri(image, 80)
    except MaskcoreError:
        pass
    probs = ", ".join(f"{LABEL_TEXT.get(c, c)} {p:.2f}"
                      for c, p in sorted((item.get("probabilities") or {}).items(),
                                         key=lambda kv: -kv[1]))
    where = f" face {item['face']}" if "face" in item else ""
    return (f'<figure class="face" title="{_e(item["source"])}{where}: {_e(probs)}">'
            + (f'<img src="{uri}" alt="">' if uri else '<div class="missing">?</div>')
            + f'<figcaption>{_chip(item["label"])} {float(item["score"]):.2f}</figcaption></figure>')


def _card(row: dict[str, Any], faces: list[dict[str, Any]], group: str,
          image: str | None) -> str:
    labels = sorted({row.get("label") or "", *(f["label"] for f in faces)} - {""})
    if row["status"] != "ok":
        body = f'<div class="missing err">{_e(row.get("error_kind") or "error")}</div>'
        detail = f'<div class="why">{_e(row.get("error", ""))}</div>'
    else:
        body = f'<img src="{image}" alt="{_e(row["source"])}">' if image else \
            '<div class="missing">picture not available</div>'
        counts = row.get("face_counts") or {}
        if row.get("faces") == 0:
            detail = '<div class="why">no face found: classified whole</div>'
        else:
            detail = '<div class="chips">' + " ".join(
                f'{_chip(c)}&times;{n}' for c, n in sorted(counts.items())) + "</div>"
    verdict = row.get("label") if row["status"] == "ok" else "error"
    score = f' {float(row["score"]):.2f}' if row.get("score") is not None else ""
    return (f'<article class="card {group}" data-group="{group}" '
            f'data-labels="{_e(" ".join(labels))}">{body}'
            f'<div class="meta"><div class="name" title="{_e(row["source"])}">'
            f'{_e(row["source"])}</div><div>{_chip(str(verdict))}{score}</div>{detail}</div>'
            "</article>")


def _chip(label: str) -> str:
    colour = colour_of(label) if label != "error" else "#333"
    return (f'<span class="chip" style="background:{colour}">'
            f"{_e(LABEL_TEXT.get(label, label))}</span>")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _histogram(title: str, scores: list[float], colour: str) -> str:
    """An inline SVG bar chart of top scores in [0, 1]."""
    counts = [0] * BINS
    for s in scores:
        counts[min(int(s * BINS), BINS - 1)] += 1
    top = max(counts) or 1
    w, h, bw = 220, 80, 220 / BINS
    bars = "".join(
        f'<rect x="{i * bw + 0.5:.1f}" y="{h - c / top * h:.1f}" width="{bw - 1:.1f}" '
        f'height="{c / top * h:.1f}"><title>{i / BINS:.2f}-{(i + 1) / BINS:.2f}: {c}</title></rect>'
        for i, c in enumerate(counts) if c)
    return (f'<figure class="hist"><figcaption>{_chip(title)} {len(scores):,}</figcaption>'
            f'<svg viewBox="0 0 {w} {h + 14}" width="{w}" height="{h + 14}" role="img" '
            f'aria-label="scores of {_e(title)}"><g fill="{colour}">{bars}</g>'
            f'<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#999"/>'
            f'<text x="0" y="{h + 12}">0</text><text x="{w / 2}" y="{h + 12}" '
            f'text-anchor="middle">0.5</text><text x="{w}" y="{h + 12}" text-anchor="end">1'
            "</text></svg></figure>")


def _page(results: RunResults, counts: Counter[str], faces: list[dict[str, Any]],
          scored: list[dict[str, Any]], cards: list[str], least: list[str], *,
          capped: bool, shown: int) -> str:
    s = results.summary
    rows = results.rows
    by_face = Counter(f["label"] for f in faces)
    by_picture = Counter(r["label"] for r in rows if r["status"] == "ok")
    no_face = sum(1 for r in rows if r["status"] == "ok" and r.get("faces") == 0)
    labels = [c for c in CLASS_COLOURS if by_face[c] or by_picture[c]] + sorted(
        (set(by_face) | set(by_picture)) - set(CLASS_COLOURS))
    hists = "".join(_histogram(c, [float(f["score"]) for f in scored if f["label"] == c],
                               colour_of(c)) for c in labels)
    tiles = [("pictures", len(rows), ""), ("faces", len(faces), ""),
             ("flagged", counts["flagged"], "someone unmasked or masked wrongly"),
             ("uncertain", counts["uncertain"],
              "not flagged; a face or the picture under the threshold"),
             ("no face found", no_face, "classified whole"), ("errors", counts["error"], "")]
    class_rows = "".join(f"<tr><td>{_chip(c)}</td><td>{by_picture[c]:,}</td>"
                         f"<td>{by_face[c]:,}</td></tr>" for c in labels)
    errors = [r for r in rows if r["status"] != "ok"]
    error_rows = "".join(f"<tr><td>{_e(r['source'])}</td><td>{_e(r.get('error_kind', ''))}</td>"
                         f"<td>{_e(r.get('error', ''))}</td></tr>" for r in errors[:MAX_ERRORS])
    when = s.get("finished_at") or s.get("consolidated_at") or ""
    models = ", ".join(f"{k} {_e(v)}" for k, v in (("classifier", s.get("model_id")),
                                                   ("detector", s.get("detector_id")))
                       if v) or "unknown"
    facts = (f"{_e(results.location)} &middot; {_e(when)} &middot; models: {models}"
             + (f" &middot; threshold {s['threshold']}" if "threshold" in s else ""))
    cap_note = (f"<p class=\"note\">Showing {shown:,} of {len(rows):,} pictures: flagged first, "
                "then uncertain, errors, the rest. Every picture is in manifest.csv.</p>"
                if capped else "")
    options = "".join(f'<option value="{_e(c)}">{_e(LABEL_TEXT.get(c, c))}</option>'
                      for c in labels)
    data = json.dumps({"cards": len(cards), "pictures": len(rows)})
    return _TEMPLATE.format(
        title=_e(f"maskcore report: {results.location}"), facts=facts,
        tiles="".join(f'<div class="tile {_e(k.split()[0])}"><b>{v:,}</b><span>{_e(k)}</span>'
                      f"<small>{_e(why)}</small></div>" for k, v, why in tiles),
        class_rows=class_rows, hists=hists, options=options, cap_note=cap_note,
        cards="\n".join(cards), least="\n".join(least), n_least=len(least),
        least_what="faces" if faces else "pictures",
        errors=error_rows or '<tr><td colspan="3">none</td></tr>',
        errors_more=(f"<p class=\"note\">{len(errors) - MAX_ERRORS:,} more in manifest.csv</p>"
                     if len(errors) > MAX_ERRORS else ""),
        n_errors=len(errors), data=_e(data), n_cards=len(cards),
        css=_CSS, js=_JS)


_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--bg:#f6f7f9;--card:#fff;--line:#e3e6eb}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg)}header{padding:18px 24px;background:#1d2330;color:#fff}
header h1{margin:0 0 4px;font-size:20px}header p{margin:0;color:#c5ccd8;font-size:13px}
main{padding:16px 24px}.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:16px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;
min-width:130px}.tile b{display:block;font-size:24px}.tile span{font-weight:600}
.tile small{display:block;color:var(--muted)}.tile.flagged b{color:#d73027}
.tile.errors b{color:#333}.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;background:var(--card)}td,th{padding:4px 10px;
border-bottom:1px solid var(--line);text-align:left}.hists{display:flex;flex-wrap:wrap;gap:12px}
.hist{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px}
.hist text{font-size:10px;fill:var(--muted)}.chip{display:inline-block;color:#fff;
border-radius:10px;padding:0 8px;font-size:12px;white-space:nowrap}
nav{margin:18px 0 10px;display:flex;gap:6px;flex-wrap:wrap;align-items:center}
nav button{border:1px solid var(--line);background:var(--card);border-radius:6px;padding:6px 12px;
cursor:pointer;font:inherit}nav button.on{background:#1d2330;color:#fff}
select{font:inherit;padding:4px}.gallery{display:grid;
grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px}.card{background:var(--card);
border:1px solid var(--line);border-radius:8px;overflow:hidden}.card.flagged{border-color:#d73027;
box-shadow:0 0 0 1px #d73027}.card img{display:block;width:100%;height:190px;object-fit:contain;
background:#eef0f3}.missing{height:190px;display:flex;align-items:center;justify-content:center;
color:var(--muted);background:#eef0f3}.missing.err{background:#fbe9e7;color:#a12}
.meta{padding:6px 8px}.name{font-size:12px;color:var(--muted);overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.why{font-size:12px;color:var(--muted)}
.face-grid{display:flex;flex-wrap:wrap;gap:8px}.face{margin:0;background:var(--card);
border:1px solid var(--line);border-radius:6px;padding:4px;text-align:center;font-size:12px}
.face img,.face .missing{width:96px;height:96px}.note{color:var(--muted)}[hidden]{display:none!important}
"""

_JS = """
(function(){
  const cards=[...document.querySelectorAll('.card')];
  const group=document.getElementById('group'), label=document.getElementById('label');
  const shown=document.getElementById('shown');
  function filter(){
    let n=0;
    for(const c of cards){
      const ok=(group.value==='all'||c.dataset.group===group.value)&&
        (label.value==='all'||c.dataset.labels.split(' ').includes(label.value));
      c.hidden=!ok; n+=ok;
    }
    shown.textContent=n+' shown';
  }
  group.addEventListener('change',filter); label.addEventListener('change',filter);
  const tabs=[...document.querySelectorAll('nav.tabs button')];
  for(const b of tabs){b.addEventListener('click',()=>{
    for(const t of tabs){t.classList.toggle('on',t===b);
      document.getElementById(t.dataset.tab).hidden=t!==b;}
  });}
  filter();
})();
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,"><title>{title}</title><style>{css}</style></head>
<body data-report="{data}"><header><h1>Face masks: what this run found</h1><p>{facts}</p></header>
<main><section class="tiles">{tiles}</section>
<section class="row"><table><tr><th>label</th><th>pictures</th><th>faces</th></tr>{class_rows}
</table><div><h3 style="margin:0 0 6px">How sure: top score per class</h3>
<div class="hists">{hists}</div></div></section>
<nav class="tabs"><button class="on" data-tab="tab-gallery">Gallery ({n_cards:,})</button>
<button data-tab="tab-least">Least confident {least_what} ({n_least})</button>
<button data-tab="tab-errors">Errors ({n_errors:,})</button></nav>
<section id="tab-gallery">{cap_note}
<nav><label>show <select id="group"><option value="all">all</option>
<option value="flagged">flagged</option><option value="uncertain">uncertain</option>
<option value="error">errors</option><option value="clear">all masked</option></select></label>
<label>with a <select id="label"><option value="all">any label</option>{options}</select></label>
<span id="shown" class="note"></span></nav>
<div class="gallery">{cards}</div></section>
<section id="tab-least" hidden><p class="note">The {least_what} the classifier was least sure
of: check these first when tuning <code>--threshold</code>.</p><div class="face-grid">{least}</div>
</section>
<section id="tab-errors" hidden><table><tr><th>source</th><th>kind</th><th>error</th></tr>
{errors}</table>{errors_more}</section>
</main><script>{js}</script></body></html>
"""
