"""The sources: what a folder, a file and an S3 prefix list, and what reading each ref gives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from maskcore.errors import StorageError, UsageError
from maskcore.storage import LocalSource, S3Store, open_source, parse_s3_url, redact, walk_files


def make_tree(root: Path) -> None:
    (root / "b").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "b" / "c.png").write_bytes(b"cc")
    (root / ".hidden").write_bytes(b"h")
    (root / "b" / ".cache").mkdir()
    (root / "b" / ".cache" / "x.jpg").write_bytes(b"x")


def test_walk_lists_files_sorted_skips_hidden_and_follows_a_loop_once(tmp_path):
    make_tree(tmp_path)
    os.symlink(tmp_path, tmp_path / "b" / "loop")  # a folder link back to the root
    entries, hidden = walk_files(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p, _ in entries]
    assert names == ["a.jpg", "b/c.png"]  # the loop adds nothing: each folder once
    assert hidden == 2
    assert all(problem == "" for _, problem in entries)


def test_local_source_rows_are_relative_sorted_and_read_back(tmp_path):
    make_tree(tmp_path)
    source = LocalSource(tmp_path)
    refs = list(source.list())
    assert [r.source for r in refs] == ["a.jpg", "b/c.png"]
    assert source.hidden_skipped == 2
    assert [source.read(r) for r in refs] == [b"a", b"cc"]


def test_a_single_file_is_its_own_input(tmp_path):
    (tmp_path / "one.jpg").write_bytes(b"1")
    refs = list(LocalSource(tmp_path / "one.jpg").list())
    assert [r.source for r in refs] == ["one.jpg"]


def test_reading_what_is_not_a_file_says_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "gone", tmp_path / "broken")
    source = LocalSource(tmp_path)
    kinds = {}
    for ref in source.list():
        with pytest.raises(StorageError) as err:
            source.read(ref)
        kinds[ref.source] = (err.value.kind, str(err.value))
    assert kinds["pipe"][0] == "not_a_file" and "FIFO" in kinds["pipe"][1]
    assert kinds["broken"] == ("not_found", "cannot read: broken symbolic link")


def test_missing_and_empty_inputs_are_refused(tmp_path):
    with pytest.raises(StorageError, match="input not found"):
        LocalSource(tmp_path / "nope")
    with pytest.raises(UsageError, match="empty"):
        open_source("")


def test_s3_urls_parse_and_credentials_never_show():
    loc = parse_s3_url("s3://bucket/some/prefix/")
    assert (loc.bucket, loc.prefix) == ("bucket", "some/prefix/")
    assert isinstance(open_source("s3://bucket/x/"), S3Store)
    for bad in ("bucket/x", "s3:///x"):
        with pytest.raises(StorageError):
            parse_s3_url(bad)
    assert "secret" not in redact("could not reach http://key:secret@host:9000/")


def test_s3_listing_skips_folder_markers_and_reads_by_key(s3_client):
    s3_client.create_bucket(Bucket="store-test")
    for key, body in (("in/a.jpg", b"a"), ("in/sub/", b""), ("in/sub/b.jpg", b"bb"),
                      ("other/c.jpg", b"c")):
        s3_client.put_object(Bucket="store-test", Key=key, Body=body)
    store = S3Store("s3://store-test/in/")
    refs = list(store.list())
    assert [r.source for r in refs] == ["s3://store-test/in/a.jpg", "s3://store-test/in/sub/b.jpg"]
    assert all(r.etag and r.size for r in refs)
    assert store.read(refs[1]) == b"bb"
    with pytest.raises(StorageError) as err:
        store.get("in/none.jpg")
    assert err.value.kind == "not_found"


def test_a_file_larger_than_one_upload_part_is_written_whole(s3_client, tmp_path):
    """put_file sends a file over boto3's 8 MB threshold as a multipart upload: the object is
    the file, byte for byte, with its content type; a bucket that is not there is a
    StorageError that names the object."""
    s3_client.create_bucket(Bucket="big-files")
    data = np.random.default_rng(0).integers(0, 256, 9 * 2**20, dtype=np.uint8).tobytes()
    path = tmp_path / "faces.jsonl"
    path.write_bytes(data)
    S3Store("s3://big-files/res/").put_file("res/faces.jsonl", path, "application/x-ndjson")
    obj = s3_client.get_object(Bucket="big-files", Key="res/faces.jsonl")
    assert obj["Body"].read() == data and obj["ContentType"] == "application/x-ndjson"
    assert obj["ETag"].strip('"').endswith("-2")  # two parts: 8 MB and 1 MB
    with pytest.raises(StorageError, match="cannot write s3://no-such-bucket/x"):
        S3Store("s3://no-such-bucket/").put_file("x", path)
