"""The results store in a bucket: parts as the ledger, ownership, consolidation with faces."""

from __future__ import annotations

import json

from maskcore.clock import seconds_of
from maskcore.ledger import RETRY_FIRST, RETRY_MOST, ResultsStore, retry_wait
from maskcore.manifest import FACE_ROWS
from maskcore.storage import S3Store


def _row(source: str, etag: str, *, kind: str = "", faces: int = 0) -> dict:
    status = "error" if kind else "ok"
    return {"source": source, "etag": etag, "status": status, "label": "" if kind else "with_mask",
            "score": None if kind else 0.9, "probabilities": {}, "faces": faces,
            "face_counts": {}, "error": "x" if kind else "", "error_kind": kind,
            "processed_at": "2026-11-24T00:00:00.000Z",
            FACE_ROWS: [{"source": source, "etag": etag, "face": k, "label": "with_mask"}
                        for k in range(faces)]}


def test_done_is_bucket_key_etag_and_transient_errors_are_not(s3_client):
    s3_client.create_bucket(Bucket="res-bucket")
    store = ResultsStore(S3Store("s3://res-bucket/res"), "m1", ["with_mask", "without_mask"])
    assert store.store.location.prefix == "res/"  # a results prefix is a folder
    store.write_part([_row("s3://a/in/x.png", "e1", faces=2),
                      _row("s3://a/in/y.png", "e2", kind="read"),
                      _row("s3://a/in/z.png", "e3", kind="decode")])
    again = ResultsStore(S3Store("s3://res-bucket/res/"), "m1", ["with_mask", "without_mask"])
    again.refresh()  # a new process reads what is done from the parts alone
    assert again.is_done("s3://a/in/x.png", "e1")
    assert not again.is_done("s3://b/in/x.png", "e1")  # another bucket, same key and content
    assert not again.is_done("s3://a/in/y.png", "e2")  # a read error is tried again
    assert again.is_done("s3://a/in/z.png", "e3")  # not a picture: a result, not a retry
    assert again.owns("res-bucket", "res/parts/m1/p.jsonl") and again.owns("res-bucket", "res/manifest.csv")
    assert not again.owns("res-bucket", "res/photo.jpg") and not again.owns("other", "res/manifest.csv")
    summary = again.consolidate()
    assert summary["total"] == 3 and summary["faces"] == 2
    faces = s3_client.get_object(Bucket="res-bucket", Key="res/faces.jsonl")["Body"].read().decode()
    assert [json.loads(x)["face"] for x in faces.split("\n") if x] == [0, 1]
    manifest = s3_client.get_object(Bucket="res-bucket", Key="res/manifest.jsonl")["Body"].read().decode()
    assert FACE_ROWS not in manifest


def test_a_new_store_reads_many_parts_and_keeps_each_objects_latest_row(s3_client):
    """More parts than one read window: every row is absorbed, whatever order the GETs in
    flight finish in, and an object written again keeps its latest row."""
    s3_client.create_bucket(Bucket="many")
    writer = ResultsStore(S3Store("s3://many/res/"), "m1", ["with_mask", "without_mask"])
    n = 150
    for i in range(n):
        writer.write_part([_row(f"s3://a/in/{i:03d}.png", f"e{i}")])
    newer = {**_row("s3://a/in/007.png", "e7-new"), "label": "without_mask",
             "processed_at": "2026-11-25T00:00:00.000Z"}
    writer.write_part([newer])
    reader = ResultsStore(S3Store("s3://many/res/"), "m1", ["with_mask", "without_mask"])
    reader.refresh()
    assert all(reader.is_done(f"s3://a/in/{i:03d}.png", f"e{i}") for i in range(n))
    assert reader.is_done("s3://a/in/007.png", "e7-new")
    summary = reader.consolidate()
    assert summary["total"] == n and summary["labels"] == {"with_mask": n - 1, "without_mask": 1}
    reader.refresh()  # nothing new: nothing read twice
    assert reader.consolidate()["total"] == n


def test_an_object_that_stays_unreadable_is_tried_less_and_less_often(s3_client):
    """Each failed read doubles the wait before the next try, up to a cap, and a new store
    (a restarted worker) counts the failures from the parts alone."""
    s3_client.create_bucket(Bucket="slow")
    classes = ["with_mask", "without_mask"]
    store = ResultsStore(S3Store("s3://slow/res/"), "m1", classes)
    x, stamps = "s3://a/in/x.png", [f"2026-11-24T{h:02d}:00:00.000Z" for h in range(10)]
    assert store.retry_at(x, "e1") is None  # never tried
    store.write_part([{**_row(x, "e1", kind="read"), "processed_at": stamps[0]}])
    assert store.retry_at(x, "e1") == seconds_of(stamps[0]) + RETRY_FIRST
    store.write_part([{**_row(x, "e1", kind="read"), "processed_at": stamps[1]},
                      {**_row("s3://a/in/y.png", "e2", kind="decode"), "processed_at": stamps[1]}])
    assert store.retry_at(x, "e1") == seconds_of(stamps[1]) + 2 * RETRY_FIRST
    assert store.retry_at("s3://a/in/y.png", "e2") is None  # not a picture: done, not retried
    assert store.retry_at(x, "e2") is None  # the object overwritten: new content, a fresh start
    for stamp in stamps[2:]:
        store.write_part([{**_row(x, "e1", kind="read"), "processed_at": stamp}])
    restarted = ResultsStore(S3Store("s3://slow/res/"), "m1", classes)
    restarted.refresh()
    assert restarted.retry_at(x, "e1") == seconds_of(stamps[-1]) + RETRY_MOST == \
        store.retry_at(x, "e1")
    store.write_part([{**_row(x, "e1"), "processed_at": stamps[-1]}])  # read at last
    assert store.is_done(x, "e1") and store.retry_at(x, "e1") is None
    assert [retry_wait(n) for n in (1, 2, 3, 100)] == [RETRY_FIRST, 2 * RETRY_FIRST,
                                                       4 * RETRY_FIRST, RETRY_MOST]
