"""WebDataset tar shards (as img2dataset / video2dataset write them) as the embed job's input.

A shard is a tar whose members ``<key>.<ext>`` belong to the sample ``<key>`` (the member name up to the
first dot of its last path component; a sample's members are consecutive). Each sample is a manifest row:
its id is the key, and each member whose extension a modality claims (``ModalitySpec.extensions``, first
in registry order: ``.png`` is an image, ``.txt`` text, ``.npy`` depth) is that modality's item: media
bytes held in the row, text decoded as UTF-8. Other members (``.json``, ``.cls``, ...) are ignored.

Member names are only split, never opened as paths: reading a tar touches nothing but the tar. A member
over ``max_member_bytes`` is that item's read error and is skipped, not read.

``--input`` may name one ``.tar``, a folder of them, or a brace pattern (``shard-{000000..000099}.tar``,
``{a,b}``), local or s3://.

Planning needs each shard's sample keys. Member headers sit between the members, so indexing a tar by its
headers reads all of it (on S3). img2dataset writes a Parquet file beside each tar (``00000.parquet``: a
row per URL it tried, with ``key`` and ``status``); the tar holds the ``success`` rows, in that order, as
``key.jpg``, ``key.txt`` (when it was given a caption column) and ``key.json``. ``sidecar_index`` reads the
keys from there instead (a few column chunks, not the tar). The plan keeps a digest of each shard's keys
and items, and the read task, which streams the tar anyway, checks it.
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.modality import Modality
from pipeline.store.sources import describe_storage_error, filesystem

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


class TarError(ValueError):
    """A shard cannot be read as a tar, or the input names no shard."""


def is_webdataset(uri: str) -> bool:
    """Whether ``uri`` names tar shards by its form: a ``.tar`` name, or a brace pattern of them."""
    return uri.lower().rstrip("/").endswith(".tar") or bool(_RANGE.search(uri) or _LIST.search(uri))


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → a-000.tar, a-001.tar, a-002.tar (zero padding as written); ``{x,y}`` → each."""
    match = _RANGE.search(pattern)
    if match:
        lo, hi = match.group(1), match.group(2)
        if int(hi) < int(lo):
            raise TarError(f"brace range {match.group(0)} in {pattern!r} runs backwards: expected low..high")
        if int(hi) - int(lo) >= 10_000_000:
            raise TarError(f"brace range {match.group(0)} in {pattern!r} names over 10 million shards")
        width = len(lo) if lo.startswith("0") else 0
        head, tail = pattern[:match.start()], pattern[match.end():]
        return [name for i in range(int(lo), int(hi) + 1) for name in expand_braces(f"{head}{i:0{width}d}{tail}")]
    match = _LIST.search(pattern)
    if match:
        head, tail = pattern[:match.start()], pattern[match.end():]
        return [name for option in match.group(1).split(",") for name in expand_braces(head + option + tail)]
    return [pattern]


def list_shards(uri: str, options: dict[str, Any]) -> list[str]:
    """The tar shards ``uri`` names, in order: itself, its brace expansion, or a folder's ``*.tar`` (sorted)."""
    if is_webdataset(uri):
        return expand_braces(uri)
    fs, path = filesystem(uri, options)
    found = sorted(p for p in fs.glob(path.rstrip("/") + "/*.tar"))
    prefix = "s3://" if uri.startswith("s3://") else ""
    if not found:
        raise TarError(f"input {uri}: a folder with no .tar shards: expected a manifest (.jsonl, .csv, .parquet), "
                       "a .tar, a folder of .tar shards or a brace pattern")
    return [prefix + p for p in found]


def extension_modalities() -> dict[str, Modality]:
    """Member extension (lower case, no dot) → the modality that claims it (the first in registry order)."""
    out: dict[str, Modality] = {}
    for m in Modality.all():
        for ext in m.spec.extensions:
            out.setdefault(ext.lstrip(".").lower(), m)
    return out


def _split(name: str) -> tuple[str, str]:
    """Member name → (sample key, extension): ``a/b/000123.jpg`` → (``a/b/000123``, ``jpg``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _members(uri: str, options: dict[str, Any], read: bool, max_member_bytes: int) -> Iterator[tuple[str, str, int, Any]]:
    """(key, ext, size, bytes or None) per regular member, in tar order. Bytes only when ``read`` and the member is
    at most ``max_member_bytes``. Raises TarError naming the shard."""
    try:
        fs, path = filesystem(uri, options)
        fh = fs.open(path, "rb")
    except Exception as e:
        raise TarError(f"cannot read shard: {describe_storage_error(uri, e)}") from None
    with fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:" if not read else "r|") as tar:
                for member in tar:
                    if not member.isfile():  # links, folders, devices: never followed
                        continue
                    key, ext = _split(member.name)
                    data = None
                    if read and member.size <= max_member_bytes:
                        data = tar.extractfile(member).read()
                    yield key, ext, member.size, data
        except tarfile.TarError as e:
            raise TarError(f"shard {uri} is not a valid tar: {e}") from None
        except TarError:
            raise
        except Exception as e:
            raise TarError(f"cannot read shard: {describe_storage_error(uri, e)}") from None


def _samples(uri: str, options: dict[str, Any], read: bool, max_member_bytes: int) -> Iterator[tuple[str, dict, list]]:
    """(key, {modality: (label, size, bytes or None)}, [(ext, size) of every member]) per sample, in tar order:
    a sample is a run of consecutive members with one key; its first member of each modality is the item."""
    claims = extension_modalities()
    key, items, members = None, {}, []
    for k, ext, size, blob in _members(uri, options, read, max_member_bytes):
        if k != key:
            if key is not None:
                yield key, items, members
            key, items, members = k, {}, []
        members.append((ext, size))
        modality = claims.get(ext)
        if modality is not None and modality not in items:  # key.jpg and key.png: the first counts
            items[modality] = (f"{uri}#{k}.{ext}", size, blob)
    if key is not None:
        yield key, items, members


def index_shard(uri: str, options: dict[str, Any]) -> dict[str, Any]:
    """What planning needs of one shard, read from its member headers only (local: seeks over the data):
    the sample keys in order, each modality's member per sample, the ignored extensions and a digest of
    the member names and sizes, and the bytes the members hold."""
    claims = extension_modalities()
    digest = hashlib.sha256(uri.encode())
    keys: list[str] = []
    names: dict[str, list[Any]] = {}
    ignored: set[str] = set()
    total = 0
    for key, items, members in _samples(uri, options, False, 0):
        for ext, size in members:
            digest.update(f"{key}.{ext}\0{size}\n".encode())
            total += size
        ignored.update(ext or "(no extension)" for ext, _ in members if ext not in claims)
        for modality in items:
            names.setdefault(modality.value, [None] * len(keys))
        keys.append(key)
        for column in names.values():
            column.append(None)
        for modality, (label, _, _) in items.items():
            names[modality.value][-1] = label
    return {"keys": keys, "names": names, "ignored": sorted(ignored), "digest": digest.hexdigest(), "bytes": total}


def sidecar_of(uri: str) -> str:
    """Where img2dataset puts a shard's Parquet: ``.../00000.tar`` → ``.../00000.parquet``."""
    return (uri[:-4] if uri.lower().endswith(".tar") else uri) + ".parquet"


def member_layout(index: dict[str, Any]) -> dict[str, str] | None:
    """Per modality, the one member extension a shard's index (from its headers) names its items by (``jpg``,
    ``mp4``, ``txt``, ...); None when a modality's items use several, or the shard has no sample."""
    layout: dict[str, str] = {}
    for modality, labels in index["names"].items():
        exts = {label.rsplit(".", 1)[-1] for label in labels if label is not None}
        if len(exts) != 1:
            return None
        layout[modality] = exts.pop()
    return layout or None


IMG2DATASET_LAYOUT = {Modality("image").value: "jpg", Modality("text").value: "txt"}


def sidecar_index(uri: str, options: dict[str, Any], layout: dict[str, str] | None = None,
                  ignored: list[str] | None = None) -> dict[str, Any] | None:
    """The shard's index (as ``index_shard`` gives it) from the Parquet img2dataset or video2dataset writes beside
    it, without reading the tar; None if there is none or it is not theirs (no ``key`` and ``status`` columns).
    Each sample it lists as downloaded gets a member per modality of ``layout`` (as the first shard's headers
    show it: ``{"video": "mp4", "text": "txt"}``, with its ``ignored`` extensions); without one, img2dataset's
    default (``key.jpg``, and ``key.txt`` when it has captions; ``key.json`` ignored)."""
    side = sidecar_of(uri)
    try:
        fs, path = filesystem(side, options)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            if not {"key", "status"} <= set(parquet.schema_arrow.names):
                return None
            table = parquet.read(columns=["key", "status"])
            captions = "caption" in parquet.schema_arrow.names
        size = fs.size(filesystem(uri, options)[1])
    except Exception as e:
        raise TarError(f"cannot read img2dataset's shard index {side}: {describe_storage_error(side, e)} "
                       "(tar_index: headers indexes the tars themselves)") from None
    stored = pc.fill_null(pc.equal(table.column("status"), "success"), False)
    keys = [str(k) for k in table.column("key").filter(stored).to_pylist() if k is not None]
    default = {m: e for m, e in IMG2DATASET_LAYOUT.items() if captions or m != Modality("text").value}
    layout = default if layout is None else layout
    names = {m: [f"{uri}#{k}.{ext}" for k in keys] for m, ext in layout.items()}
    shape = captions if layout == default else sorted(layout.items())  # img2dataset's: the digest as it always was
    digest = hashlib.sha256(f"{uri}\0sidecar\0{size}\0{shape}\0".encode())
    digest.update("\0".join(keys).encode())
    return {"keys": keys, "names": names, "ignored": ["json"] if ignored is None else list(ignored),
            "digest": digest.hexdigest(), "bytes": size}


def samples_digest(table: pa.Table, mask: Any) -> str:
    """Of a shard's normalized rows (its index or what its read found): the ids in order and, per modality,
    which rows are its items (``mask(table, modality)``). Equal for the plan and the read of an unchanged shard."""
    digest = hashlib.sha256("\0".join(table.column("id").to_pylist()).encode())
    for m in Modality.all():
        if m.value in table.column_names:
            items = mask(table, m)
            if items.any():
                digest.update(f"\0{m.value}\0".encode() + np.packbits(items).tobytes())
    return digest.hexdigest()


def index_table(index: dict[str, Any], first_row: int) -> pa.Table:
    """A shard's index as a normalized table (no bytes): what the driver's plan counts."""
    n = len(index["keys"])
    cols: dict[str, Any] = {"row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                            "id": pa.array(index["keys"], pa.string())}
    for m in Modality.all():
        if m.value in index["names"]:
            cols[m.value] = pa.array(index["names"][m.value], pa.string())
            cols[f"{m.value}:error"] = pa.nulls(n, pa.string())
    return pa.table(cols).replace_schema_metadata({"ignored": json.dumps(index["ignored"])})


def read_shard(uri: str, options: dict[str, Any], first_row: int, max_member_bytes: int) -> pa.Table:
    """A shard's samples as a normalized table with the media bytes (``<m>:bytes``) and texts, streamed once."""
    keys: list[str] = []
    values: dict[str, list[Any]] = {}
    data: dict[str, list[Any]] = {}
    errors: dict[str, list[Any]] = {}
    for key, items, _ in _samples(uri, options, True, max_member_bytes):
        for modality in items:
            for store in (values, data, errors):
                store.setdefault(modality.value, [None] * len(keys))
        keys.append(key)
        for column in (*values.values(), *data.values(), *errors.values()):
            column.append(None)
        for modality, (label, size, blob) in items.items():
            name = modality.value
            values[name][-1] = label
            if blob is None:
                errors[name][-1] = f"tar member {label} is {size} bytes, over limits.max_file_bytes={max_member_bytes}"
            elif modality.is_inline:
                try:
                    values[name][-1] = blob.decode("utf-8")
                except UnicodeDecodeError as e:
                    errors[name][-1] = f"tar member {label} is not valid UTF-8 (byte 0x{blob[e.start]:02x} at {e.start})"
            else:
                data[name][-1] = blob
    n = len(keys)
    cols: dict[str, Any] = {"row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                            "id": pa.array(keys, pa.string())}
    for m in Modality.all():
        if m.value in values:
            cols[m.value] = pa.array(values[m.value], pa.string())
            cols[f"{m.value}:error"] = pa.array(errors[m.value], pa.string())
            if not m.is_inline:
                cols[f"{m.value}:bytes"] = pa.array(data[m.value], pa.large_binary())
    return pa.table(cols)
