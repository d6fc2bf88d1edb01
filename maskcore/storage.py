"""Where pictures come from and results go: a local folder or an S3-compatible bucket prefix.

Both kinds of source offer the same two calls, ``list()`` and ``read(ref)``, so the pipeline takes
either. S3 goes through boto3, which reads the standard AWS variables (``AWS_ENDPOINT_URL`` for
MinIO, Ceph or a local server among them) and retries throttling and 5xx answers in its
``standard`` mode. botocore errors are translated to :class:`StorageError` here, at the edge.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from maskcore.errors import StorageError, UsageError
from maskcore.settings import parse_number

__all__ = ["LocalSource", "Ref", "S3Location", "S3Store", "Source", "open_source", "parse_s3_url"]


@dataclass(frozen=True, order=True)
class Ref:
    """One object to classify. Sorting refs sorts by ``source``, the manifest's row order."""

    source: str  # what the manifest shows: a path relative to the input, or an s3:// URL
    key: str  # how the source reads it: an absolute path, or an object key
    etag: str = ""  # S3 only: the object's ETag, without quotes
    size: int = 0
    problem: str = ""  # set by a listing that already knows the object cannot be read


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


#: Objects larger than this are refused before a byte is read (an error row): far above any
#: real picture, low enough that a stray disk image or video cannot exhaust a decode process.
#: ``$MASKCORE_MAX_BYTES`` changes it.
MAX_BYTES = 256 * 2**20


def max_bytes() -> int:
    """The size limit in force (``$MASKCORE_MAX_BYTES`` or :data:`MAX_BYTES`)."""
    raw = os.environ.get("MASKCORE_MAX_BYTES")
    if not raw:
        return MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"MASKCORE_MAX_BYTES={raw!r}: takes a whole number of bytes") from None
    if value < 1:
        raise UsageError(f"MASKCORE_MAX_BYTES={raw!r}: must be positive")
    return value


def walk_files(root: Path) -> tuple[list[tuple[Path, str]], int]:
    """Every non-hidden entry under ``root`` that is not a folder, as (path, why-not-readable);
    unreadable folders are listed too, with the reason. Iterative (any depth), symlinks to
    folders followed once each (a loop is walked once). Returns the entries, sorted, and how
    many hidden entries were skipped.

    Folder-per-class training and the local source both walk with this.
    """
    out: list[tuple[Path, str]] = []
    hidden = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop: each folder once
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:
            out.append((folder, f"cannot read folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                hidden += 1
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(path)
            else:
                out.append((path, ""))
    out.sort(key=lambda e: os.fsencode(e[0]))
    return out, hidden


class LocalSource:
    """A folder (recursive, following symlinks, skipping hidden entries) or a single file.

    Anything that is not a regular file (a FIFO, a device, a socket, a broken link) and every
    folder that cannot be read gets a ref whose read fails with the reason, so it becomes an
    error row: nothing under the input is skipped without a word, and nothing can block a read.
    File names are kept as the system gives them: bytes that are not UTF-8 stay as Python's
    surrogate escapes and are written back as the same bytes.

    Args:
        path: the folder or file.
        exclude: folders not to list (the job's own output folders, when they lie inside).

    Raises:
        StorageError: the input does not exist.
        UsageError: the input is empty, or a folder that lies in one of ``exclude``.
    """

    def __init__(self, path: str | os.PathLike[str],
                 exclude: Sequence[str | os.PathLike[str]] = ()) -> None:
        if str(path) == "":
            raise UsageError("the input is empty: name a folder, a file or an s3:// prefix")
        self.path = Path(path)
        if not self.path.exists() and not self.path.is_symlink():
            raise StorageError(f"input not found: {path}")
        self.exclude = [Path(e).resolve() for e in exclude]
        if self.path.is_dir():
            for folder in self.exclude:
                # Everything under the input would be left out as the job's own output, and
                # the run would write an empty manifest over the folder's results.
                if _inside(self.path, folder):
                    raise UsageError(
                        f"the input {path} lies in {folder}, a folder this job writes to: every "
                        "picture in it would be left out as the job's own output. Write to "
                        "another folder (one inside the input is fine: it is left out).")
        self.hidden_skipped = 0
        self.excluded = 0

    def describe(self) -> str:
        return str(self.path)

    def list(self) -> Iterator[Ref]:
        if not self.path.is_dir():
            return iter([Ref(source=self.path.name, key=str(self.path.absolute()))])
        root = self.path
        entries, self.hidden_skipped = walk_files(root)
        # Resolving every path costs a system call per path component: only when an excluded
        # folder lies inside the input at all.
        exclude = [e for e in self.exclude if _inside(e, root.resolve())]
        refs = []
        for full, problem in entries:
            if exclude and any(_inside(full, e) for e in exclude):
                self.excluded += 1
                continue
            rel = full.relative_to(root).as_posix() or "."
            refs.append(Ref(source=rel + ("/" if problem else ""), key=str(full.absolute()),
                            problem=problem))
        return iter(sorted(refs))

    def read(self, ref: Ref) -> bytes:
        if ref.problem:  # set by list() for a folder it could not read
            raise StorageError(ref.problem)
        path = Path(ref.key)
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"cannot read: not a regular file ({_kind(st.st_mode)})",
                                   kind="not_a_file")
            limit = max_bytes()
            if st.st_size > limit:
                raise StorageError(f"too large: {st.st_size:,} bytes, over the limit of "
                                   f"{limit:,} (MASKCORE_MAX_BYTES)", kind="too_large")
            # O_NONBLOCK: a file swapped for a FIFO after the check cannot block the open.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise StorageError("cannot read: not a regular file", kind="not_a_file")
                return fh.read(limit + 1)[: limit + 1]
        except FileNotFoundError as exc:
            what = "broken symbolic link" if path.is_symlink() else "file vanished"
            raise StorageError(f"cannot read: {what}", kind="not_found") from exc
        except OSError as exc:
            raise StorageError(f"cannot read: {exc.strerror or exc}") from exc


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a file"


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

    attempts = int(_env_number("MASKCORE_S3_ATTEMPTS", 8, 1, 100))
    timeout = _env_number("MASKCORE_S3_TIMEOUT", 20.0, 0.1, 600)
    # Each attempt waits at most `timeout` to connect and `timeout` for each read, so a server
    # that accepts and never answers is given up on after about attempts x 2 x timeout seconds
    # (8 x 40 s by default), each retry logged.
    config = Config(
        retries={"mode": "standard", "max_attempts": attempts},
        connect_timeout=timeout,
        read_timeout=timeout,
        max_pool_connections=32,
    )
    # A session of its own: boto3's default session caches settings read from the environment,
    # and creating clients from one shared session is not thread-safe.
    client = boto3.session.Session().client("s3", config=config, **overrides)
    client.meta.events.register("needs-retry.s3", _log_retry)
    return client


def _env_number(var: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(var)
    if not raw:
        return default
    value: float = parse_number(var, raw, float, low, high,
                                f"a number from {low:g} to {high:g} ({default:g} by default)")
    return value


def _log_retry(attempts: int = 0, caught_exception: Exception | None = None,
               response: Any = None, operation: Any = None, **_: Any) -> None:
    """A line on stderr for each failed S3 attempt (botocore decides whether to retry)."""
    if caught_exception is None and not (isinstance(response, tuple) and len(response) > 1
                                         and response[1].get("ResponseMetadata", {})
                                         .get("HTTPStatusCode", 200) >= 500):
        return
    what = repr(caught_exception) if caught_exception is not None else \
        f"HTTP {response[1]['ResponseMetadata']['HTTPStatusCode']}"
    record = {"event": "s3_attempt_failed", "operation": getattr(operation, "name", None),
              "attempt": attempts, "error": redact(what)[:300]}
    sys.stderr.write(json.dumps(record) + "\n")


def redact(text: str) -> str:
    """``text`` with any user:password@ of a URL replaced by ``***@``."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", text)


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
        limit = max_bytes()
        if ref.size > limit:  # the listing knows the size: refuse before reading
            raise StorageError(f"too large: {ref.size:,} bytes, over the limit of {limit:,} "
                               "(MASKCORE_MAX_BYTES)", kind="too_large")
        data, _ = self.get(ref.key)
        return data

    def get(self, key: str) -> tuple[bytes, str]:
        """An object's bytes and ETag."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.location.bucket, Key=key)
            return obj["Body"].read(), obj.get("ETag", "").strip('"')
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot read {self.url_of(key)}: {_reason(exc)}",
                               kind=_kind_of(exc)) from exc

    def etag_of(self, key: str) -> str:
        """An object's ETag from a HEAD request, or "" when it cannot be had (the read that
        follows then says why)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        except (BotoCoreError, ClientError):
            return ""
        return str(head.get("ETag", "")).strip('"')

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write a whole object (S3 PUTs are atomic: readers see all of it or the old one)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=data,
                                   ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write {self.url_of(key)}: {_reason(exc)}") from exc

    def put_file(self, key: str, path: str | os.PathLike[str],
                 content_type: str = "application/octet-stream") -> None:
        """Write a whole object from a local file. A large file goes up in parts (a multipart
        upload: no less atomic, the object appears when it is complete), so a file of any size
        can be written, past a single PUT's 5 GB and without holding its bytes in memory."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(os.fspath(path), self.location.bucket, key,
                                    ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
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


#: S3 error codes that mean the object is gone for good (anything else may pass: retried).
_GONE = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


def _kind_of(exc: Exception) -> str:
    """``not_found`` for an S3 answer that the object or bucket does not exist, else ``read``."""
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return "not_found" if code in _GONE else "read"


def _reason(exc: Exception) -> str:
    """botocore's error, said briefly: the S3 error code and message where there is one (and
    never the credentials an endpoint URL may carry)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return redact(f"{err.get('Code', '?')}: {err.get('Message', '')}".strip(": "))
    return redact(str(exc))


def open_source(spec: str, exclude: Sequence[str | os.PathLike[str]] = ()
                ) -> LocalSource | S3Store:
    """A source from what a user typed: an ``s3://`` URL, a folder or a file (``exclude``:
    folders inside it not to list, such as the job's own output)."""
    if spec.startswith("s3://"):
        return S3Store(spec)
    return LocalSource(spec, exclude)
