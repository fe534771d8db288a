"""Manifests, URI resolution and size-limited reads from local disk or S3 (fsspec/s3fs)."""
from __future__ import annotations

import csv as _csv
import dataclasses
import hashlib
import io
import json
import os
import posixpath
from collections import Counter
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.config import StorageConfig
from pipeline.modality import Modality

MAX_MANIFEST_BYTES = 4 * 2**30  # a manifest is read whole by the driver
_SCHEMES = ("s3://", "file://")


class ManifestError(ValueError):
    """The manifest cannot be used as a whole (unreadable, no id column, duplicate ids, ...)."""


class ReadError(OSError):
    """A media file could not be read; the message names the URI and the cause."""


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


def read_limited(uri: str, options: dict[str, Any], max_bytes: int) -> bytes:
    """Read the whole file at ``uri`` after ``check_file``; a file that grows past the limit while read is refused."""
    fs, path = check_file(uri, options, max_bytes)
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except Exception as e:
        raise ReadError(describe_storage_error(uri, e)) from None
    if len(data) > max_bytes:
        raise ReadError(f"file grew past limits.max_file_bytes={max_bytes} while reading: {uri}")
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


def resolve_uri(value: str, base: str) -> str:
    """Resolve a manifest media value against the manifest's folder ``base``.

    Absolute paths, file:// and s3:// URIs stand as they are; relative paths join ``base``.
    Raises ValueError for other schemes (http:// is never fetched by the embed job).
    """
    value = value.strip()
    if value.startswith(_SCHEMES):
        return value
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise ValueError(f"unsupported URI scheme {scheme!r} in {value!r}: expected a local path, file:// or s3://")
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


@dataclasses.dataclass
class Manifest:
    """Rows of a manifest: ids in file order and, per modality column, the raw values."""

    uri: str
    base: str
    digest: str
    ids: list[str]
    columns: dict[Modality, list[Any]]
    ignored_columns: list[str]


def read_manifest(uri: str, options: dict[str, Any]) -> Manifest:
    """Read a JSONL, CSV or Parquet manifest. Raises ManifestError naming the file and the problem."""
    lower = uri.lower()
    try:
        fs, path = filesystem(uri, options)
        size = fs.size(path)
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest {uri} is {size} bytes, over the {MAX_MANIFEST_BYTES} byte limit: split it")
        data = fs.cat_file(path)
    except ManifestError:
        raise
    except Exception as e:
        raise ManifestError(f"cannot read manifest: {describe_storage_error(uri, e)}") from None
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        rows = _parse_jsonl(data, uri)
    elif lower.endswith(".csv"):
        rows = _parse_csv(data, uri)
    elif lower.endswith(".parquet"):
        rows = _parse_parquet(data, uri)
    else:
        raise ManifestError(f"manifest {uri}: unknown format, expected a name ending in .jsonl, .csv or .parquet")
    return _to_manifest(rows, uri, hashlib.sha256(data).hexdigest())


def _parse_jsonl(data: bytes, uri: str) -> list[dict[str, Any]]:
    rows, problems = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problems.append(f"line {number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: expected a JSON object, got {type(row).__name__}")
            continue
        rows.append(row)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ManifestError(f"manifest {uri}: {len(problems)} bad line(s): {shown}")
    return rows


def _parse_csv(data: bytes, uri: str) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ManifestError(f"manifest {uri}: not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line})") from None
    try:
        table = pacsv.read_csv(io.BytesIO(text.encode("utf-8")),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False,
                                                                    column_types=_all_string_types(text)))
    except (pa.ArrowInvalid, _csv.Error) as e:
        raise ManifestError(f"manifest {uri}: not a valid CSV file: {e}") from None
    return table.to_pylist()


def _all_string_types(text: str) -> dict[str, pa.DataType]:
    header = next(_csv.reader(io.StringIO(text)), [])
    return {name: pa.string() for name in header}


def _parse_parquet(data: bytes, uri: str) -> list[dict[str, Any]]:
    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ManifestError(f"manifest {uri}: not a valid Parquet file: {e}") from None


def _to_manifest(rows: list[dict[str, Any]], uri: str, digest: str) -> Manifest:
    if not rows:
        raise ManifestError(f"manifest {uri} has no rows: expected one row per sample with an 'id' column")
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    if "id" not in names:
        raise ManifestError(f"manifest {uri} has no 'id' column (columns: {', '.join(names)})")
    ids, bad = [], []
    for number, row in enumerate(rows, start=1):
        value = row.get("id")
        if value is None or isinstance(value, (bool, float, list, dict)) or str(value).strip() == "":
            bad.append(f"row {number}: {value!r}")
        ids.append(str(value).strip() if value is not None else "")
    if bad:
        raise ManifestError(f"manifest {uri}: missing or invalid id (expected a non-empty string or integer): {'; '.join(bad[:10])}")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise ManifestError(f"manifest {uri}: {len(dupes)} duplicate id(s), ids must be unique: {', '.join(map(repr, dupes[:20]))}")
    known = set(Modality.all())
    columns = {Modality(n): [row.get(n) for row in rows] for n in names if n in known}
    if not columns:
        raise ManifestError(f"manifest {uri} has no modality column: expected any of {', '.join(sorted(known))}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    ignored = [n for n in names if n != "id" and n not in known]
    return Manifest(uri=uri, base=base, digest=digest, ids=ids, columns=columns, ignored_columns=ignored)
