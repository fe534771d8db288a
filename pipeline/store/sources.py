"""Storage access, URI resolution and size-limited reads from local disk or S3 (fsspec/s3fs)."""
from __future__ import annotations

import os
import posixpath
import stat
from typing import Any

import fsspec

from pipeline.config import StorageConfig
from pipeline.store.errors import ReadError

_SCHEMES = ("s3://", "file://")


def storage_options(storage: StorageConfig) -> dict[str, Any]:
    """fsspec options for s3:// URIs: endpoint and region from config, else the AWS environment."""
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if storage.region:
        client_kwargs["region_name"] = storage.region
    opts: dict[str, Any] = {"anon": storage.anon, "config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                                                                     "retries": {"max_attempts": 5}}}
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def filesystem(uri: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``uri`` and the path within it (s3 options apply to s3:// only)."""
    if uri.startswith("s3://"):
        return fsspec.core.url_to_fs(uri, **options)
    return fsspec.core.url_to_fs(uri)


def describe_storage_error(uri: str, err: BaseException) -> str:
    """A message that says what went wrong with ``uri`` and, for S3, what to check."""
    name = type(err).__name__
    text = str(err) or name
    if isinstance(err, FileNotFoundError):
        return f"file not found: {uri}"
    if isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"access denied reading {uri}: check the credentials' permissions ({text[:200]})"
    if "NoCredentials" in name or "Unable to locate credentials" in text:
        return (f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
                "or storage.anon: true for public buckets")
    if "EndpointConnectionError" in name or "Could not connect" in text:
        return f"cannot reach the S3 endpoint for {uri}: check storage.endpoint_url / AWS_ENDPOINT_URL ({text[:200]})"
    return f"cannot read {uri}: {name}: {text[:300]}"


def check_file(uri: str, options: dict[str, Any], max_bytes: int) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri`` after checking it is a readable, non-empty regular file
    of at most ``max_bytes``. Raises ReadError naming the URI and the cause."""
    try:
        fs, path = filesystem(uri, options)
        info = fs.info(path)
    except Exception as e:  # fsspec/botocore raise many types; each becomes a named read error
        raise ReadError(describe_storage_error(uri, e)) from None
    if info.get("type") not in (None, "file"):
        raise ReadError(f"not a regular file: {uri} is a {info.get('type')}")
    size = info.get("size")
    if size is not None and size > max_bytes:
        raise ReadError(f"file is {size} bytes, over limits.max_file_bytes={max_bytes}: {uri}")
    if size == 0:
        raise ReadError(f"empty file (0 bytes): {uri}")
    if local_path(uri) is not None and not os.access(path, os.R_OK):
        raise ReadError(f"access denied reading {uri}")
    return fs, path


def read_limited(uri: str, options: dict[str, Any], max_bytes: int, http: dict[str, Any] | None = None) -> bytes:
    """Read the whole file at ``uri``, at most ``max_bytes``: a local file after ``check_file`` (one that grows past
    the limit while read is refused), an S3 object in one ranged GET, an http(s) URL fetched under ``http``
    (``HttpConfig`` as a dict; see ``pipeline.store.http``)."""
    if uri[:8].lower().startswith(("http://", "https://")):
        from pipeline.store.http import fetch

        if http is None:
            raise ReadError(f"cannot fetch {uri}: http(s) URLs are not fetched here")
        return fetch(uri, http, max_bytes)
    path = local_path(uri)
    if path is None:
        return _read_range(uri, options, max_bytes)
    try:  # not through fsspec: its resolution and info() cost more than reading a small image
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO must not block open
    except Exception as e:
        raise ReadError(describe_storage_error(uri, e)) from None
    try:
        _check_stat(uri, os.fstat(fd), max_bytes)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(max_bytes + 1)
        except Exception as e:
            raise ReadError(describe_storage_error(uri, e)) from None
    return _bounded(data, uri, max_bytes, f"file grew past limits.max_file_bytes={max_bytes} while reading")


def _check_stat(uri: str, st: os.stat_result, max_bytes: int) -> None:
    """``check_file``'s checks on a local file's stat: a regular file, not empty, at most ``max_bytes``."""
    if not stat.S_ISREG(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode) else "special file"
        raise ReadError(f"not a regular file: {uri} is a {kind}")
    if st.st_size > max_bytes:
        raise ReadError(f"file is {st.st_size} bytes, over limits.max_file_bytes={max_bytes}: {uri}")
    if st.st_size == 0:
        raise ReadError(f"empty file (0 bytes): {uri}")


def _read_range(uri: str, options: dict[str, Any], max_bytes: int) -> bytes:
    """A remote object's bytes in one ranged GET of at most ``max_bytes`` + 1 bytes (no HEAD first): an object
    that fills the range is over the limit."""
    try:
        fs, path = filesystem(uri, options)
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    except Exception as e:  # an empty object cannot satisfy a range: S3 answers 416 InvalidRange
        if "InvalidRange" in str(e) or "416" in str(e):
            raise ReadError(f"empty file (0 bytes): {uri}") from None
        raise ReadError(describe_storage_error(uri, e)) from None
    return _bounded(data, uri, max_bytes, f"file is over limits.max_file_bytes={max_bytes}")


def _bounded(data: bytes, uri: str, max_bytes: int, over: str) -> bytes:
    """``data`` read from ``uri`` with one byte to spare: a ReadError (``over``) past ``max_bytes``, or when empty."""
    if len(data) > max_bytes:
        raise ReadError(f"{over}: {uri}")
    if not data:
        raise ReadError(f"empty file (0 bytes): {uri}")
    return data


def local_path(uri: str) -> str | None:
    """The local filesystem path of ``uri``, or None when it is remote."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        return None
    return uri


def resolve_uri(value: str, base: str, http: bool = False) -> str:
    """Resolve a manifest media value against the manifest's folder ``base``.

    Absolute paths, file:// and s3:// URIs (and http(s) URLs when ``http``) stand as they are; relative paths
    join ``base``. Raises ValueError for other schemes.
    """
    value = value.strip()
    if value.startswith(_SCHEMES) or (http and value[:8].lower().startswith(("http://", "https://"))):
        return value
    if "://" in value:
        scheme = value.split("://", 1)[0]
        fetched = ", http:// or https://" if http else " (http(s) only with http.enabled: true)"
        raise ValueError(f"unsupported URI scheme {scheme!r} in {value!r}: expected a local path, file://, s3://"
                         + fetched)
    if os.path.isabs(value):
        return value
    if base.startswith("s3://"):
        # resolve ".." as a local path would (S3 keys are literal); never above the bucket
        bucket, _, prefix = base[len("s3://"):].partition("/")
        key = posixpath.normpath(posixpath.join(prefix, value))
        if key == ".." or key.startswith("../"):
            raise ValueError(f"{value!r} resolves above the bucket of the manifest's folder {base}")
        return f"s3://{bucket}/{key}"
    return os.path.normpath(os.path.join(local_path(base) or base, value))
