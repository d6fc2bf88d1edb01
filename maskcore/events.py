"""The objects an event names: S3 notifications, direct or in SQS messages, and EventBridge.

Parsing only; what to do with the objects is :mod:`maskcore.serverless`'s. A malformed SQS
message is logged and dropped on its own (it would never parse), never failing its batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from maskcore.worker import log_event

__all__ = ["S3Object", "is_scheduled", "is_sqs", "objects_of"]


@dataclass(frozen=True)
class S3Object:
    """An object an event names, and the SQS message that named it (None outside SQS)."""

    bucket: str
    key: str
    etag: str
    message_id: str | None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_sqs(event: dict[str, Any]) -> bool:
    """Whether the event is a batch of SQS messages (whose failures are reported per message)."""
    records = event.get("Records") or []
    return bool(records) and records[0].get("eventSource") == "aws:sqs"


def is_scheduled(event: dict[str, Any]) -> bool:
    """Whether the event is an EventBridge schedule (the nightly backlog pass)."""
    return event.get("detail-type") == "Scheduled Event"


def objects_of(event: dict[str, Any]) -> list[S3Object]:
    """The objects an event names (SQS bodies that are not JSON are logged and dropped)."""
    objects: list[S3Object] = []
    if event.get("source") == "aws.s3" or event.get("detail-type") == "Object Created":
        objects += _from_eventbridge(event, None)
    for record in event.get("Records") or []:
        source = record.get("eventSource")
        if source == "aws:s3":
            objects += _from_s3_record(record, None)
        elif source == "aws:sqs":
            msg = record.get("messageId")
            try:
                body = json.loads(record.get("body") or "{}")
            except ValueError:
                log_event("bad_message", message_id=msg, reason="body is not JSON")
                continue  # will never parse: retrying would not help
            if not isinstance(body, dict):
                log_event("bad_message", message_id=msg,
                          reason=f"body is JSON but not an object ({type(body).__name__})")
                continue
            if body.get("Event") == "s3:TestEvent":
                continue
            # One malformed message must not fail the batch: it is logged and dropped (it will
            # never parse), the good messages beside it go on.
            try:
                found = []
                if body.get("detail-type") == "Object Created":
                    found += _from_eventbridge(body, msg)
                for inner in body.get("Records") or []:
                    found += _from_s3_record(inner, msg)
            except (KeyError, TypeError, AttributeError) as exc:
                log_event("bad_message", message_id=msg, reason=f"no bucket or key ({exc!r})")
                continue
            objects += found
    return objects


def _from_s3_record(record: dict[str, Any], message_id: str | None) -> list[S3Object]:
    if not str(record.get("eventName", "")).startswith("ObjectCreated"):
        return []
    s3 = record["s3"]
    return [S3Object(bucket=s3["bucket"]["name"],
                    key=unquote_plus(s3["object"]["key"]),  # S3 notifications URL-encode keys
                    etag=str(s3["object"].get("eTag", "")).strip('"'),
                    message_id=message_id)]


def _from_eventbridge(event: dict[str, Any], message_id: str | None) -> list[S3Object]:
    # Unlike S3 notifications, EventBridge carries the key as it is, not URL-encoded (as moto's
    # emulation of both does): decoding it would turn a key's "+" into a space.
    detail = event.get("detail") or {}
    return [S3Object(bucket=detail["bucket"]["name"], key=detail["object"]["key"],
                    etag=str(detail["object"].get("etag", "")).strip('"'),
                    message_id=message_id)]
