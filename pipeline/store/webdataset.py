"""WebDataset tar shards (as img2dataset / video2dataset write them) as the embed job's input.

A shard is a tar whose members ``<key>.<ext>`` belong to the sample ``<key>`` (the member name up to the
first dot of its last path component; a sample's members are consecutive). Each sample is a manifest row:
its id is the key, and each member whose extension a modality claims (``ModalitySpec.extensions``, first
in registry order: ``.png`` is an image, ``.txt`` text, ``.npy`` depth) is that modality's item: media
bytes held in the row, text decoded as UTF-8. Other members (``.json``, ``.cls``, ...) are ignored.

Member names are only split, never opened as paths: reading a tar touches nothing but the tar. A member
over ``max_member_bytes`` is that item's read error and is skipped, not read.

``--input`` may name one ``.tar``, a folder of them, or a brace pattern (``shard-{000000..000099}.tar``,
``{a,b}``, nested, with steps ``{0..6..2}`` or letters ``{a..c}``, expanded as bash expands it), local or s3://.

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
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.modality import Modality
from pipeline.store.sources import describe_storage_error, filesystem
from pipeline.store.tar_headers import TarHeaderError, members as tar_members

_BRACES = re.compile(r"\{[^{}]*(?:,|\.\.)[^{}]*\}")  # a {list,} or a {range..}: what makes a brace pattern
_INT_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?\}")
MAX_SHARDS = 10_000_000  # what one pattern may name (its expansion is a list in memory)
MAX_BRACE_DEPTH = 16     # braces nested deeper than this are refused (the expansion recurses once per level)


class TarError(ValueError):
    """A shard cannot be read as a tar, or the input names no shard."""


def is_webdataset(uri: str) -> bool:
    """Whether ``uri`` names tar shards by its form: a ``.tar`` name, or a brace pattern of them."""
    return uri.lower().rstrip("/").endswith(".tar") or bool(_BRACES.search(uri))


def expand_braces(pattern: str) -> list[str]:
    """The shard names of a brace pattern, as bash expands it (the ``braceexpand`` package): ``a-{000..002}.tar`` →
    a-000.tar, a-001.tar, a-002.tar (zero padding as written), ``{x,y}`` → each, nested, ``{0..6..2}`` with a step,
    ``{a..c}`` letters, ``{2..0}`` downwards; ``\\{`` is a literal brace. At most ``MAX_SHARDS`` names, each once."""
    from itertools import islice

    from braceexpand import UnbalancedBracesError, braceexpand

    if _most_names(pattern) > MAX_SHARDS:  # refused before anything is built
        raise TarError(f"brace pattern {pattern!r} names over {MAX_SHARDS:,} shards")
    try:
        names = list(islice(braceexpand(pattern), MAX_SHARDS + 1))
    except UnbalancedBracesError:
        raise TarError(f"brace pattern {pattern!r}: unbalanced braces (escape a literal brace as \\{{)") from None
    if len(names) > MAX_SHARDS:
        raise TarError(f"brace pattern {pattern!r} names over {MAX_SHARDS:,} shards")
    seen: set[str] = set()
    twice = next((n for n in names if n in seen or seen.add(n)), None)
    if twice is not None:
        raise TarError(f"brace pattern {pattern!r} names the shard {twice!r} more than once")
    return names


def _most_names(pattern: str) -> int:
    """An upper bound of the names ``pattern`` expands to: the product, over its brace groups at every depth, of
    each group's alternatives (a range's length, or its top-level commas + 1). Backslash escapes are skipped."""
    bound, opened, commas = 1, [], []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            opened.append(i)
            commas.append(0)
            if len(opened) > MAX_BRACE_DEPTH:
                raise TarError(f"brace pattern {pattern[:80]!r}...: braces nested over {MAX_BRACE_DEPTH} deep")
        elif c == "," and commas:
            commas[-1] += 1
        elif c == "}" and opened:
            group, n = pattern[opened.pop():i + 1], commas.pop()
            ranged = _INT_RANGE.fullmatch(group)
            if ranged:
                lo, hi, step = int(ranged.group(1)), int(ranged.group(2)), int(ranged.group(3) or 1) or 1
                n = abs(hi - lo) // step + 1
            else:
                n = 52 if re.fullmatch(r"\{[A-Za-z]\.\.[A-Za-z](\.\.-?\d+)?\}", group) else n + 1
            bound *= max(n, 1)
            if bound > MAX_SHARDS:
                return bound
        i += 1
    return bound


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


def _open(uri: str, options: dict[str, Any]) -> tuple[Any, str]:
    """(open file, identity) of a shard; the identity (size and ETag or mtime) changes when the file is rewritten."""
    try:
        fs, path = filesystem(uri, options)
        info = fs.info(path)
        fh = fs.open(path, "rb")
    except Exception as e:
        raise TarError(f"cannot read shard: {describe_storage_error(uri, e)}") from None
    return fh, shard_identity(info)


def shard_identity(info: dict[str, Any]) -> str:
    """A file's size and version as its filesystem reports them (S3: ETag; local: mtime)."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{version}"


def identity_size(identity: str) -> int | None:
    """The size in bytes an identity records (None if the filesystem did not say)."""
    size = identity.split(":", 1)[0]
    return int(size) if size.isdigit() else None


def _members(fh: Any, uri: str, identity: str, read: bool,
             max_member_bytes: int) -> Iterator[tuple[str, str, int, Any]]:
    """(key, ext, size, bytes or None) per regular member, in tar order (headers read by ``tar_headers``, which
    bounds every claim); ``size`` is -1 for a sparse member, which is never read. Bytes only when ``read`` and the
    member is at most ``max_member_bytes``. Raises TarError naming the shard."""
    size = identity_size(identity)
    with fh:
        try:
            for member, data in tar_members(fh, size, max_member_bytes if read else -1):
                if member.kind == "other":  # links, folders, devices: never followed
                    continue
                key, ext = _split(member.name)
                _check_key(key, member.name, uri)
                yield key, ext, -1 if member.kind == "sparse" else member.size, data
        except TarHeaderError as e:
            raise TarError(f"shard {uri} is not a valid tar: {e}") from None
        except TarError:
            raise
        except Exception as e:
            raise TarError(f"cannot read shard: {describe_storage_error(uri, e)}") from None


# what an id may not hold: control characters (a newline would split line-based tools' records)
BAD_ID_CHARS = r"[\x00-\x1f\x7f-\x9f]"
_BAD_ID = re.compile(BAD_ID_CHARS)


def _check_key(key: str, name: str, uri: str) -> None:
    """A sample key becomes an id: non-empty, no blank stem, no spaces at its ends, no control characters."""
    stem = key.rpartition("/")[2]
    if not stem.strip() or key != key.strip() or _BAD_ID.search(key):
        raise TarError(f"shard {uri}: member {name!r} gives the sample key {key!r}: expected a non-empty key "
                       "without spaces at its ends or control characters (a key is the member name up to the "
                       "first dot of its last part, and becomes the sample's id)")


def _samples(uri: str, options: dict[str, Any], read: bool, max_member_bytes: int,
             identity: list[str] | None = None) -> Iterator[tuple[str, dict, list]]:
    """(key, {modality: (label, size, bytes or None)}, [(ext, size) of every member]) per sample, in tar order:
    a sample is a run of consecutive members with one key; its first member of each modality is the item.
    ``identity``: a list the shard's identity is appended to, once it is open."""
    claims = extension_modalities()
    fh, found = _open(uri, options)
    if identity is not None:
        identity.append(found)
    key, items, members = None, {}, []
    for k, ext, size, blob in _members(fh, uri, found, read, max_member_bytes):
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
    the sample keys in order, each modality's member per sample, the ignored extensions, a digest of the
    member names and sizes, the bytes the members hold and the file's identity."""
    claims = extension_modalities()
    digest = hashlib.sha256(uri.encode())
    keys: list[str] = []
    names: dict[str, list[Any]] = {}
    ignored: set[str] = set()
    total, identity = 0, []
    for key, items, members in _samples(uri, options, False, 0, identity):
        for ext, size in members:
            digest.update(f"{key}.{ext}\0{size}\n".encode())
            total += max(size, 0)
            if ext not in claims:
                ignored.add(ext or "(no extension)")
        for modality, (label, _, _) in items.items():
            if modality.value not in names:  # a modality first seen here: its column so far is empty
                names[modality.value] = [None] * len(keys)
            names[modality.value].append(label)
        keys.append(key)
        for column in names.values():
            if len(column) < len(keys):
                column.append(None)
    return {"keys": keys, "names": names, "ignored": sorted(ignored), "digest": digest.hexdigest(), "bytes": total,
            "identity": identity[0] if identity else ""}


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
    default (``key.jpg``, and ``key.txt`` when it has captions; ``key.json`` ignored).

    The Parquet is trusted no further than its tar allows: a list of more downloaded samples than the tar's size
    can hold (each member takes a 512-byte header) is refused before any key is read."""
    side = sidecar_of(uri)
    try:
        fs, path = filesystem(side, options)
        if not fs.exists(path):
            return None
        identity = shard_identity(fs.info(filesystem(uri, options)[1]))
        with fs.open(path, "rb") as fh:
            parquet = pq.ParquetFile(fh, read_dictionary=["key", "status"])
            if not {"key", "status"} <= set(parquet.schema_arrow.names):
                return None
            captions = "caption" in parquet.schema_arrow.names
            default = {m: e for m, e in IMG2DATASET_LAYOUT.items() if captions or m != Modality("text").value}
            layout = default if layout is None else layout
            stored = _downloaded(parquet.read(columns=["status"]).column("status"))
            size = identity_size(identity)
            # each member takes a 512-byte header, and each key is written in the tar at least once
            _check_capacity(side, uri, size, int(pc.sum(stored).as_py() or 0),
                            size // (512 * max(len(layout), 1)) if size is not None else None, "downloaded samples")
            keys = parquet.read(columns=["key"]).column("key").filter(stored)
            _check_capacity(side, uri, size, _expanded_bytes(keys), size, "bytes of keys")
    except TarError:
        raise
    except Exception as e:
        raise TarError(f"cannot read img2dataset's shard index {side}: {describe_storage_error(side, e)} "
                       "(tar_index: headers indexes the tars themselves)") from None
    keys = [k for k in pc.cast(keys, pa.string()).to_pylist() if k is not None]
    for key in keys:
        _check_key(key, f"{key} (listed in {side})", uri)
    names = {m: [f"{uri}#{k}.{ext}" for k in keys] for m, ext in layout.items()}
    shape = captions if layout == default else sorted(layout.items())  # img2dataset's: the digest as it always was
    digest = hashlib.sha256(f"{uri}\0sidecar\0{size}\0{shape}\0".encode())
    digest.update("\0".join(keys).encode())
    return {"keys": keys, "names": names, "ignored": ["json"] if ignored is None else list(ignored),
            "digest": digest.hexdigest(), "bytes": size or 0, "identity": identity}


def _downloaded(status: pa.ChunkedArray) -> pa.Array:
    """Rows whose status is ``success``, without expanding a dictionary column (a few bytes may encode millions)."""
    status = status.combine_chunks() if status.num_chunks else pa.array([], pa.string())
    if pa.types.is_dictionary(status.type):
        wanted = pc.fill_null(pc.equal(pc.cast(status.dictionary, pa.string()), "success"), False)
        return pc.fill_null(pc.array_take(wanted, status.indices), False)
    return pc.fill_null(pc.equal(pc.cast(status, pa.string()), "success"), False)


def _expanded_bytes(values: pa.ChunkedArray) -> int:
    """The bytes a (possibly dictionary-encoded) string column holds once expanded, computed without expanding it."""
    total = 0
    for chunk in values.chunks:
        if pa.types.is_dictionary(chunk.type):
            lengths = pc.binary_length(pc.cast(chunk.dictionary, pa.string()))
            total += int(pc.sum(pc.array_take(lengths, chunk.indices)).as_py() or 0)
        else:
            total += int(pc.sum(pc.binary_length(pc.cast(chunk, pa.string()))).as_py() or 0)
    return total


def _check_capacity(side: str, uri: str, size: int | None, claimed: int, capacity: int | None, what: str) -> None:
    """Refuse a sidecar that claims more ``what`` than its tar of ``size`` bytes can hold."""
    if size is not None and capacity is not None and claimed > capacity:
        raise TarError(f"img2dataset's shard index {side} lists {claimed} {what}, but {uri} ({size} bytes) can hold "
                       f"at most {capacity}: the .parquet does not describe this tar (tar_index: headers indexes "
                       "the tars themselves)")


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


def read_shard(uri: str, options: dict[str, Any], first_row: int, max_member_bytes: int) -> tuple[pa.Table, str]:
    """A shard's samples as a normalized table with the media bytes (``<m>:bytes``) and texts, streamed once, and
    the file's identity as it was opened (``shard_identity``)."""
    keys: list[str] = []
    columns: dict[str, tuple[list, list, list]] = {}  # modality → (values, bytes, errors), a row per key
    identity: list[str] = []
    for key, items, _ in _samples(uri, options, True, max_member_bytes, identity):
        for modality in items:
            if modality.value not in columns:  # first seen here: empty so far
                columns[modality.value] = ([None] * len(keys), [None] * len(keys), [None] * len(keys))
        keys.append(key)
        for column in columns.values():
            for store in column:
                store.append(None)
        for modality, (label, size, blob) in items.items():
            values, data, errors = columns[modality.value]
            values[-1] = label
            errors[-1] = _member_error(label, size, blob, max_member_bytes)
            if errors[-1] is not None:
                continue
            if modality.is_inline:
                try:
                    values[-1] = blob.decode("utf-8")
                except UnicodeDecodeError as e:
                    errors[-1] = f"tar member {label} is not valid UTF-8 (byte 0x{blob[e.start]:02x} at {e.start})"
            else:
                data[-1] = blob
    n = len(keys)
    cols: dict[str, Any] = {"row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                            "id": pa.array(keys, pa.string())}
    for m in Modality.all():
        if m.value in columns:
            values, data, errors = columns[m.value]
            cols[m.value] = pa.array(values, pa.string())
            cols[f"{m.value}:error"] = pa.array(errors, pa.string())
            if not m.is_inline:
                cols[f"{m.value}:bytes"] = pa.array(data, pa.large_binary())
    return pa.table(cols), identity[0] if identity else ""


def _member_error(label: str, size: int, blob: bytes | None, max_member_bytes: int) -> str | None:
    """Why a member's bytes were not read (a sparse member, or one over the limit), or None."""
    if size < 0:
        return (f"tar member {label} is a sparse file: sparse members are not read (their declared size is not "
                "their stored size)")
    if blob is None:
        return f"tar member {label} is {size} bytes, over limits.max_file_bytes={max_member_bytes}"
    return None
