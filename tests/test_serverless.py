"""The serverless handler with real-shaped events against the local S3 server over HTTP."""

from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest

import maskcore.serverless as serverless
from tests.faulty_proxy import FaultyProxy
from tests.helpers import BAD_INPUTS, encode, gradient

BUCKET = "uploads"


@pytest.fixture
def env(s3_client, monkeypatch, model_path):
    s3_client.create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("MASKCORE_MODEL", str(model_path))
    monkeypatch.setenv("MASKCORE_RESULTS", f"s3://{BUCKET}/results/")
    monkeypatch.setenv("MASKCORE_SOURCE", f"s3://{BUCKET}/incoming/")
    for name in ("_ENGINE", "_RESULTS"):
        monkeypatch.setattr(serverless, name, None)
    monkeypatch.setattr(serverless, "_LAST_CONSOLIDATED", 0.0)
    return s3_client


def put(client, key: str, data: bytes) -> str:
    return client.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')


def s3_record(key: str, etag: str) -> dict:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
                   "object": {"key": quote_plus(key), "size": 1, "eTag": etag}}}


def sqs_record(message_id: str, body: dict) -> dict:
    return {"messageId": message_id, "receiptHandle": "x", "body": json.dumps(body),
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:1:q",
            "awsRegion": "us-east-1", "attributes": {}, "messageAttributes": {}}


def eventbridge(key: str, etag: str) -> dict:
    return {"version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3",
            "account": "1", "time": "2026-11-23T00:00:00Z", "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{BUCKET}"],
            "detail": {"version": "0", "bucket": {"name": BUCKET},
                       "object": {"key": key, "size": 1, "etag": etag}, "reason": "PutObject"}}


def part_rows(client) -> list[dict]:
    rows = []
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix="results/parts/").get("Contents", []):
        body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read().decode()
        rows += [json.loads(x) for x in body.split("\n") if x]
    return rows


def test_direct_s3_event_and_duplicate_delivery(env):
    keys = ["incoming/a photo.jpg", "incoming/b.png", "incoming/broken.jpg"]
    etags = [put(env, keys[0], encode(gradient(50, 40), "JPEG")),
             put(env, keys[1], encode(gradient(30, 30, seed=2), "PNG")),
             put(env, keys[2], BAD_INPUTS["truncated_body"])]
    event = {"Records": [s3_record(k, e) for k, e in zip(keys, etags, strict=True)]}
    out = serverless.handler(event, None)
    assert out == {"classified": 3, "duplicates": 0, "errors": 1}
    loaded = serverless._ENGINE
    rows = {r["source"]: r for r in part_rows(env)}
    assert set(rows) == {f"s3://{BUCKET}/{k}" for k in keys}
    assert rows[f"s3://{BUCKET}/incoming/broken.jpg"]["status"] == "error"
    assert all(r["etag"] for r in rows.values())
    # the same delivery again: nothing new
    assert serverless.handler(event, None)["duplicates"] == 3
    assert len(part_rows(env)) == 3
    manifest = env.get_object(Bucket=BUCKET, Key="results/manifest.jsonl")["Body"].read()
    assert len(manifest.splitlines()) == 3
    assert loaded is not None and serverless._ENGINE is loaded  # loaded once per container


def test_sqs_wrapped_with_transient_and_permanent_failures(env, s3, monkeypatch):
    good = put(env, "incoming/good.jpg", encode(gradient(), "JPEG"))
    flaky = put(env, "incoming/flaky.jpg", encode(gradient(seed=3), "JPEG"))
    bad = put(env, "incoming/text.jpg", b"not a picture")
    event = {"Records": [
        sqs_record("m-good", {"Records": [s3_record("incoming/good.jpg", good)]}),
        sqs_record("m-flaky", {"Records": [s3_record("incoming/flaky.jpg", flaky)]}),
        sqs_record("m-text", {"Records": [s3_record("incoming/text.jpg", bad)]}),
        sqs_record("m-gone", {"Records": [s3_record("incoming/deleted.jpg", "abc")]}),
        sqs_record("m-test", {"Event": "s3:TestEvent", "Bucket": BUCKET}),
    ]}
    import maskcore.storage as storage

    with FaultyProxy(s3, slowdown_every=0, reset_every=0, always_fail="flaky.jpg") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("MASKCORE_S3_ATTEMPTS", "2")
        monkeypatch.setattr(storage, "_CLIENT", None)
        out = serverless.handler(event, None)
    monkeypatch.setattr(storage, "_CLIENT", None)
    assert out == {"batchItemFailures": [{"itemIdentifier": "m-flaky"}]}
    rows = {r["source"].rsplit("/", 1)[1]: r for r in part_rows(env)}
    assert rows["good.jpg"]["status"] == "ok"
    assert rows["text.jpg"]["status"] == "error"  # a result, not a failure
    assert rows["deleted.jpg"]["status"] == "error" and "NoSuchKey" in rows["deleted.jpg"]["error"]
    # the redelivered message succeeds once the object can be read
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    out = serverless.handler({"Records": [event["Records"][1]]}, None)
    assert out == {"batchItemFailures": []}
    latest = [r for r in part_rows(env) if r["source"].endswith("flaky.jpg")]
    assert [r["status"] for r in latest] == ["error", "ok"]


def test_eventbridge_and_results_prefix_is_ignored(env):
    # EventBridge carries the key as it is (S3 notifications URL-encode it): a space and a plus
    # sign reach the handler unchanged and must not be decoded.
    key = "incoming/x 1+1.png"
    etag = put(env, key, encode(gradient(seed=5), "PNG"))
    own = put(env, "results/manifest.csv", b"source,status\n")
    out = serverless.handler(eventbridge(key, etag), None)
    assert out == {"classified": 1, "duplicates": 0, "errors": 0}
    out = serverless.handler(eventbridge("results/manifest.csv", own), None)
    assert out == {"classified": 0, "duplicates": 0, "errors": 0}
    assert [(r["source"], r["status"]) for r in part_rows(env)] == [(f"s3://{BUCKET}/{key}", "ok")]


def test_scheduled_event_processes_the_backlog(env):
    for i in range(5):
        put(env, f"incoming/{i}.jpg", encode(gradient(seed=i), "JPEG"))
    scheduled = {"version": "0", "id": "s1", "detail-type": "Scheduled Event",
                 "source": "aws.events", "detail": {}}
    assert serverless.handler(scheduled, None)["classified"] == 5
    assert serverless.handler(scheduled, None)["classified"] == 0
    summary = json.loads(env.get_object(Bucket=BUCKET, Key="results/summary.json")["Body"].read())
    assert summary["total"] == 5


def test_malformed_sqs_messages_do_not_fail_the_good_ones(env):
    etag = put(env, "incoming/ok.png", encode(gradient()))
    odd = {"messageId": "m-list", "body": "[1, 2]", "eventSource": "aws:sqs"}
    records = [sqs_record("m-good", {"Records": [s3_record("incoming/ok.png", etag)]}), odd,
               {"messageId": "m-null", "body": "null", "eventSource": "aws:sqs"},
               {"messageId": "m-str", "body": '"hello"', "eventSource": "aws:sqs"},
               sqs_record("m-nokey", {"Records": [{"eventName": "ObjectCreated:Put",
                                                   "s3": {"bucket": {"name": BUCKET}}}]})]
    out = serverless.handler({"Records": records})
    assert out == {"batchItemFailures": []}
    assert [r["source"] for r in part_rows(env)] == [f"s3://{BUCKET}/incoming/ok.png"]


def test_missing_bucket_is_final_and_no_etag_is_looked_up(env):
    etag = put(env, "incoming/a.png", encode(gradient()))
    gone = s3_record("incoming/x.png", "abc")
    gone["s3"]["bucket"]["name"] = "no-such-bucket"
    out = serverless.handler({"Records": [sqs_record("m1", {"Records": [gone]})]})
    assert out == {"batchItemFailures": []}  # not retried until the dead-letter queue
    row = part_rows(env)[0]
    assert row["error_kind"] == "not_found"
    no_etag = s3_record("incoming/a.png", "")
    for _ in range(2):  # the second delivery is recognised as done
        serverless.handler({"Records": [no_etag]})
    rows = [r for r in part_rows(env) if r["source"].endswith("incoming/a.png")]
    assert len(rows) == 1 and rows[0]["etag"] == etag
