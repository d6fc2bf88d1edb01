"""Where pictures come from and results go: a local folder or an S3-compatible bucket prefix.

Both kinds of source offer the same two calls, ``list()`` and ``read(ref)``, so the pipeline takes
either. S3 goes through boto3, which reads the standard AWS variables (``AWS_ENDPOINT_URL`` for
MinIO, Ceph or a local server among them) and retries throttling and 5xx answers in its
``standard`` mode. botocore errors are translated to :class:`StorageError` here, at the edge.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from maskcore.errors import StorageError

#: Every error about reading an object starts so; the worker retries those on its next pass.
READ_ERROR_PREFIX = "cannot read"

__all__ = ["LocalSource", "Ref", "S3Location", "S3Store", "Source", "open_source", "parse_s3_url"]


@dataclass(frozen=True, order=True)
class Ref:
    """One object to classify. Sorting refs sorts by ``source``, the manifest's row order."""

    source: str  # what the manifest shows: a path relative to the input, or an s3:// URL
    key: str  # how the source reads it: an absolute path, or an object key
    etag: str = ""  # S3 only: the object's ETag, without quotes
    size: int = 0


class Source(Protocol):
    """Lists refs and reads their bytes. Must pickle (it travels to decode processes)."""

    def list(self) -> Iterator[Ref]:
        """Every object to classify, sorted by ``source``."""
        ...

    def read(self, ref: Ref) -> bytes:
        """The object's bytes; raises StorageError when it cannot be read."""
        ...

    def describe(self) -> str:
        """The input as a user gave it."""
        ...


class LocalSource:
    """A folder (recursive, following symlinks, skipping hidden entries) or a single file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists() and not self.path.is_symlink():
            raise StorageError(f"input not found: {path}")
        self.hidden_skipped = 0

    def describe(self) -> str:
        return str(self.path)

    def list(self) -> Iterator[Ref]:
        if not self.path.is_dir():
            return iter([Ref(source=self.path.name, key=str(self.path.resolve()))])
        refs = []
        root = self.path
        hidden = 0
        seen_dirs: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop: walk each folder once
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            hidden += sum(d.startswith(".") for d in dirnames)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    hidden += 1
                    continue
                full = Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                refs.append(Ref(source=rel, key=str(full)))
        self.hidden_skipped = hidden
        return iter(sorted(refs))

    def read(self, ref: Ref) -> bytes:
        try:
            return Path(ref.key).read_bytes()
        except FileNotFoundError as exc:
            what = "broken symbolic link" if Path(ref.key).is_symlink() else "file vanished"
            raise StorageError(f"cannot read: {what}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix`` split in two."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def join(self, name: str) -> str:
        """A key under this prefix."""
        if not self.prefix or self.prefix.endswith("/"):
            return self.prefix + name
        return f"{self.prefix}/{name}"


def parse_s3_url(url: str) -> S3Location:
    """Split an ``s3://bucket/prefix`` URL; raises StorageError for anything else."""
    if not url.startswith("s3://"):
        raise StorageError(f"not an s3:// URL: {url}")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {url}")
    return S3Location(bucket=bucket, prefix=prefix)


def make_s3_client(**overrides: Any) -> Any:
    """A boto3 S3 client with standard retries; endpoint and credentials from the environment."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": int(os.environ.get("MASKCORE_S3_ATTEMPTS",
                                                                        "8"))},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,
    )
    # A session of its own: boto3's default session caches settings read from the environment,
    # and creating clients from one shared session is not thread-safe.
    return boto3.session.Session().client("s3", config=config, **overrides)


_CLIENT: tuple[int, Any] | None = None


def _process_client() -> Any:
    """One client per process (clients are thread-safe, but not to be shared across a fork)."""
    global _CLIENT
    if _CLIENT is None or _CLIENT[0] != os.getpid():
        _CLIENT = (os.getpid(), make_s3_client())
    return _CLIENT[1]


class S3Store:
    """An S3 prefix: list, read, write and delete objects. The client is made lazily per process."""

    def __init__(self, url: str, client: Any = None) -> None:
        self.location = parse_s3_url(url)
        self._client = client

    def __getstate__(self) -> dict[str, Any]:
        # boto3 clients do not pickle; each decode process builds its own from the environment.
        return {"location": self.location, "_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _process_client()
        return self._client

    def describe(self) -> str:
        return self.location.url

    def url_of(self, key: str) -> str:
        return f"s3://{self.location.bucket}/{key}"

    def list(self, prefix: str | None = None) -> Iterator[Ref]:
        """Objects under the prefix (or ``prefix``), sorted by key; folder markers are skipped."""
        from botocore.exceptions import BotoCoreError, ClientError

        pfx = self.location.prefix if prefix is None else prefix
        refs = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=pfx
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    refs.append(Ref(source=self.url_of(key), key=key,
                                    etag=obj.get("ETag", "").strip('"'), size=obj.get("Size", 0)))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot list {self.url_of(pfx)}: {_reason(exc)}") from exc
        return iter(sorted(refs))

    def read(self, ref: Ref) -> bytes:
        data, _ = self.get(ref.key)
        return data

    def get(self, key: str) -> tuple[bytes, str]:
        """An object's bytes and ETag."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.location.bucket, Key=key)
            return obj["Body"].read(), obj.get("ETag", "").strip('"')
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot read {self.url_of(key)}: {_reason(exc)}") from exc

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write a whole object (S3 PUTs are atomic: readers see all of it or the old one)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=data,
                                   ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write {self.url_of(key)}: {_reason(exc)}") from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete {self.url_of(key)}: {_reason(exc)}") from exc

    def check(self) -> None:
        """Fail early (StorageError) when the bucket cannot be reached or listed."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.list_objects_v2(Bucket=self.location.bucket,
                                        Prefix=self.location.prefix, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot list {self.location.url}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """botocore's error, said briefly: the S3 error code and message where there is one."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip(": ")
    return str(exc)


def open_source(spec: str) -> LocalSource | S3Store:
    """A source from what a user typed: an ``s3://`` URL, a folder or a file."""
    if spec.startswith("s3://"):
        return S3Store(spec)
    return LocalSource(spec)
