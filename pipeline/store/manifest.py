"""Manifests (JSONL, CSV, Parquet; local or S3) read in pieces, never whole: the driver's plan, a worker's read.

The driver makes a ``ManifestPlan`` in one streaming pass: it checks every row (ids present and unique,
JSON/UTF-8 valid), counts each modality's items per shard and cuts the file into chunks (byte ranges at
line ends, or runs of Parquet row groups). Workers then read their chunk with one ranged read and parse
it the same way (``read_chunk``). What the driver keeps grows only with the number of rows as one 8-byte
id hash each (the duplicate-id check) and with shards x modalities counts; no Python object per row.

A chunk read gives a *normalized* table: ``row`` (0-based number among the manifest's rows), ``id``
(string) and, per modality column of the manifest, the raw string value (``<m>``, null when absent)
and why it cannot be used (``<m>:error``, e.g. a number where a URI was expected).

This module plans and reads; turning a piece's bytes into rows is ``pipeline.store.parsing``'s, the normalized
table (making it, and reading its items) ``pipeline.store.rows``'s.
"""
from __future__ import annotations

import csv as _csv
import contextlib
import dataclasses
import hashlib
import io
import logging
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.modality import Modality
from pipeline.store.errors import ManifestError
from pipeline.store.parsing import parse_piece
from pipeline.store.rows import checked_ids, embedded_bytes, ignored_columns, item_mask, normalize
from pipeline.store.sources import describe_storage_error, filesystem
from pipeline.store.parquet_input import open_manifest, plan_slices, read_rows
from pipeline.store.tar_headers import interpreter_note
from pipeline.store.webdataset import (TarError, index_shard, index_table, is_webdataset, list_shards, member_layout,
                                       read_shard, samples_digest, sidecar_index, sidecar_of)

log = logging.getLogger(__name__)

PIECE_BYTES = 8 << 20   # what the driver parses at a time (and the size of its reads)
CHUNK_BYTES = 256 << 20  # a read task's input stops growing here too (Parquet with media bytes, tar shards)
MAX_LINE_BYTES = 64 << 20  # one manifest row; a file without line ends is refused, not read into memory
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A run of whole rows: bytes [start, stop) of a JSONL/CSV file, row groups [start, stop) of a Parquet file, or
    tar shards [start, stop) of a WebDataset input."""

    index: int
    first_row: int
    rows: int
    start: int
    stop: int
    first_line: int  # 1-based line number of its first line (for messages)
    digest: str = ""  # JSONL/CSV: sha256 of its bytes; WebDataset: of its shards' samples_digest. The read checks it
    skip: int = 0  # Parquet: rows of its first row group before it (a row group may be split between chunks)


@dataclasses.dataclass
class ManifestPlan:
    """What the driver knows of a manifest after one pass: small, whatever the number of rows (except ``repeats``,
    planned on request, which grows with the repeated media items; the job strips it before the plan is handed
    to read tasks)."""

    uri: str
    base: str
    fmt: str
    digest: str
    header: list[str]                # every column name, in first-seen order
    rows: int
    modalities: list[Modality]       # modality columns, in registry order
    ignored_columns: list[str]
    shard_size: int
    counts: np.ndarray               # (shards, len(modalities)) items per shard
    chunks: list[Chunk]
    sources: list[str] = dataclasses.field(default_factory=list)  # WebDataset: the tar shards, in row order
    sidecars: bool = False  # WebDataset: keys taken from the img2dataset/video2dataset .parquet beside each tar
    # WebDataset, per shard: what its read must find again: the 32-byte digest of its samples, its rows, and an
    # 8-byte digest of its file's identity (size and ETag or mtime: a tar rewritten with the same keys differs)
    source_digests: bytes = b""
    source_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    source_versions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))
    # media named by the same URI string in more than one chunk, per modality: (rows, starts), the rows of group g
    # are rows[starts[g]:starts[g + 1]], ascending (planned with ``repeats``; the job hands read tasks only slices)
    repeats: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def shards(self) -> int:
        return int(self.counts.shape[0])

    def items(self, modality: Modality) -> int:
        return int(self.counts[:, self.modalities.index(modality)].sum())

    def shard_items(self, modality: Modality) -> np.ndarray:
        return self.counts[:, self.modalities.index(modality)]


def manifest_format(uri: str, options: dict[str, Any] | None = None) -> str:
    """jsonl, csv, parquet (by the name's suffix) or webdataset (a .tar, a brace pattern, a folder of tars)."""
    if is_webdataset(uri):
        return "webdataset"
    for suffix, fmt in FORMATS.items():
        if uri.lower().endswith(suffix):
            return fmt
    if options is not None:
        try:
            fs, path = filesystem(uri, options)
            folder = fs.isdir(path)
        except Exception:
            folder = False
        if folder:
            return "webdataset"
    raise ManifestError(f"input {uri}: unknown format, expected a manifest named .jsonl, .csv or .parquet, "
                        "a .tar shard, a folder of .tar shards or a brace pattern (shard-{000000..000099}.tar)")


def base_of(uri: str) -> str:
    """The folder relative media paths of ``uri`` resolve against."""
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


# --- the driver's pass ---------------------------------------------------------------------------------
def plan_manifest(uri: str, options: dict[str, Any], shard_size: int, chunk_rows: int = 100_000,
                  index_map: Callable[..., Iterator[Any]] | None = None, tar_index: str = "auto",
                  repeats: bool = False) -> ManifestPlan:
    """Read ``uri`` once, in pieces; raise ManifestError naming the file and every problem found.

    ``repeats``: also find media named by the same URI string in more than one chunk (``ManifestPlan.repeats``;
    a 16-byte digest and a row number per media item are held until the pass ends).

    WebDataset shards are indexed by ``index_map(fn, args)`` (yields ``fn(*a)`` per ``a`` in order; the embed
    job runs them as Ray tasks, so no media byte reaches the driver); default: here, one after another.
    ``tar_index``: "auto" takes their keys from img2dataset's (or video2dataset's) Parquet beside each tar once
    the first shard's agrees with its tar's headers; "headers" reads every tar's headers.
    """
    fmt = manifest_format(uri, options)
    if fmt == "webdataset":
        return _plan_shards(uri, options, shard_size, chunk_rows, index_map or _local_map, tar_index)
    try:
        fs, path = filesystem(uri, options)
        fh = fs.open(path, "rb")
    except Exception as e:
        raise ManifestError(f"cannot read manifest: {describe_storage_error(uri, e)}") from None
    scan = _Scan(uri, options, shard_size, chunk_rows, repeats)
    with fh:
        try:
            if fmt == "parquet":
                for group, skip, table, size in _parquet_pieces(fh, uri, scan):
                    scan.add(table, group, group + 1, 0, size, skip=skip)
            else:
                header = _csv_header(fh, uri, scan) if fmt == "csv" else None
                scan.header = header or []
                for offset, line, data in _byte_pieces(fh, scan):
                    table = parse_piece(data, fmt, header, line, scan.rows, uri)
                    scan.add(table, offset, offset + len(data), line, len(data), data)
        except ManifestError:
            raise
        except Exception as e:
            raise ManifestError(f"cannot read manifest: {describe_storage_error(uri, e)}") from None
    return scan.finish(fmt)


def _local_map(fn: Callable[..., Any], args: list[tuple]) -> Iterator[Any]:
    return (fn(*a) for a in args)


def _plan_shards(uri: str, options: dict[str, Any], shard_size: int, chunk_rows: int,
                 index_map: Callable[..., Iterator[Any]], tar_index: str) -> ManifestPlan:
    """A WebDataset input's plan: one row per sample key, chunks of whole shards."""
    scan = _Scan(uri, options, shard_size, chunk_rows)
    note = interpreter_note()
    if note:
        log.info("%s", note)
    digests, rows, versions = bytearray(), [], []
    with input_errors():  # a Ray task's error wraps the shard's TarError (and may pass for one)
        shards = list_shards(uri, options)
        sidecars = tar_index == "auto" and next(index_map(sidecar_layout, [(shards[0], options)]))
        if tar_index == "auto":
            log.info("tar index: %s", "member headers" if sidecars is None else
                     f"member headers (the .parquet beside {shards[0]} does not list its samples)" if not sidecars else
                     "the img2dataset/video2dataset .parquet beside each tar (the first agrees with its tar: "
                     + ", ".join(f"{m} = key.{e}" for m, e in sidecars["layout"].items()) + ")")
        for i, index in enumerate(index_map(shard_index, [(s, options, sidecars or None) for s in shards])):
            scan.digest.update(index["digest"].encode())
            digests += bytes.fromhex(index["samples"])
            rows.append(len(index["keys"]))
            versions.append(version_digest(index["identity"]))
            scan.add(index_table(index, scan.rows), i, i + 1, 0, index["bytes"], bytes.fromhex(index["samples"]))
    plan = scan.finish("webdataset", shards)
    plan.sidecars = bool(sidecars)
    plan.source_digests, plan.source_rows = bytes(digests), np.array(rows, np.int64)
    plan.source_versions = np.array(versions, np.uint64)
    return plan


def shard_index(uri: str, options: dict[str, Any], sidecar: dict[str, Any] | None) -> dict[str, Any]:
    """One shard's index (from the Parquet beside it when ``sidecar`` (``sidecar_layout``'s answer) and it has
    one, else its member headers) with its ``samples`` digest (what its read must find)."""
    index = (sidecar and sidecar_index(uri, options, sidecar["layout"], sidecar["ignored"])) or index_shard(uri, options)
    index["samples"] = samples_digest(index_table(index, 0), item_mask)
    return index


def version_digest(identity: str) -> int:
    """8 bytes of a file's identity (``shard_identity``), as an unsigned integer."""
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "little")


def sidecar_layout(uri: str, options: dict[str, Any]) -> dict[str, Any] | bool | None:
    """Whether the Parquet beside the shard (img2dataset's or video2dataset's) gives the samples its headers do,
    with its members named as the headers name them: then ``{"layout": {modality: extension}, "ignored": [...]}``
    for every shard's index; False if it does not; None if there is none."""
    if sidecar_index(uri, options) is None:
        return None
    headers = index_shard(uri, options)
    layout = member_layout(headers)
    if layout is None:
        return False
    side = sidecar_index(uri, options, layout, headers["ignored"])
    agrees = samples_digest(index_table(side, 0), item_mask) == samples_digest(index_table(headers, 0), item_mask)
    return {"layout": layout, "ignored": headers["ignored"]} if agrees else False


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Raise the input's fault behind any error in the block (see ``_input_error``) as a plain ManifestError;
    other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        cause = _input_error(e)
        if cause is None:
            raise
        raise cause from None


def _input_error(e: BaseException) -> ManifestError | None:
    """The input's fault behind ``e`` (a ManifestError or TarError raised in a Ray task, which Ray re-raises
    wrapped, and Ray Data wraps again) as a plain ManifestError with the original message; None for other errors."""
    for _ in range(8):
        inner = getattr(e, "cause", None)  # RayTaskError: the task's own exception
        if isinstance(inner, BaseException) and inner is not e:
            e = inner
        elif isinstance(e, (TarError, ManifestError)):
            return ManifestError(getattr(e, "message", str(e)))
        elif e.__cause__ is not None:
            e = e.__cause__
        else:
            return None
    return None


class _Scan:
    """The running state of ``plan_manifest``."""

    def __init__(self, uri: str, options: dict[str, Any], shard_size: int, chunk_rows: int, repeats: bool = False):
        self.uri, self.options, self.shard_size, self.chunk_rows = uri, options, shard_size, max(chunk_rows, 1)
        self.repeats = repeats
        self.media: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # with repeats: (digests, rows) per piece
        self.digest = hashlib.sha256()
        self.header: list[str] = []
        self.names: list[str] = []
        self.rows = 0
        self.hashes: list[np.ndarray] = []
        self.counts: dict[str, np.ndarray] = {}
        self.chunks: list[Chunk] = []
        self.open: list[Any] = []  # the pieces of the chunk being gathered: (first_row, rows, start, stop, line, skip)
        self.open_bytes = 0
        self.open_digest = hashlib.sha256()

    def add(self, table: pa.Table, start: int, stop: int, line: int, nbytes: int, data: bytes | None = None,
            skip: int = 0) -> None:
        for name in [m for m in Modality.all() if m.value in table.column_names] + ignored_columns(table):
            if name not in self.names:
                self.names.append(name)
        n = table.num_rows
        if n:
            self.hashes.append(np.fromiter(map(hash, table.column("id").to_pylist()), np.int64, n))
            shard = table.column("row").to_numpy() // self.shard_size
            shards = int(shard[-1]) + 1
            for m in Modality.all():
                if m.value in table.column_names:
                    mask = item_mask(table, m)
                    counts = np.bincount(shard[mask], minlength=shards)
                    old = self.counts.get(m.value, np.zeros(0, np.int64))
                    grown = np.zeros(max(len(old), shards), np.int64)
                    grown[:len(old)] += old
                    grown[:shards] += counts
                    self.counts[m.value] = grown
                    if self.repeats and not m.is_inline:
                        self._add_media(table, m, mask)
        self.open.append((self.rows, n, start, stop, line, skip))
        if data is not None:
            self.open_digest.update(data)
        self.rows += n
        self.open_bytes += nbytes
        if sum(p[1] for p in self.open) >= self.chunk_rows or self.open_bytes >= CHUNK_BYTES:
            self._close_chunk()

    def _add_media(self, table: pa.Table, modality: Modality, mask: np.ndarray) -> None:
        """Keep a 16-byte digest of the URI string and the row of each item named by a (usable) URI."""
        named = mask & pc.is_null(table.column(f"{modality.value}:error")).to_numpy(zero_copy_only=False)
        held = embedded_bytes(table, modality)
        if held is not None:
            named &= pc.is_null(held).to_numpy(zero_copy_only=False)
        if not named.any():
            return
        chosen = table.filter(pa.array(named))
        values = chosen.column(modality.value).to_pylist()
        digests = np.frombuffer(b"".join(hashlib.blake2b(v.encode(), digest_size=16).digest() for v in values),
                                np.uint64).reshape(-1, 2)
        self.media.setdefault(modality.value, []).append((digests, chosen.column("row").to_numpy()))

    def _repeats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per modality, the groups of rows naming the same URI string from more than one chunk."""
        firsts = np.array([c.first_row for c in self.chunks], np.int64)
        found = {}
        for name, pieces in self.media.items():
            digests = np.concatenate([d for d, _ in pieces])
            rows = np.concatenate([r for _, r in pieces])
            order = np.lexsort((rows, digests[:, 1], digests[:, 0]))
            digests, rows = digests[order], rows[order]
            starts = np.flatnonzero(np.concatenate([[True], (digests[1:] != digests[:-1]).any(axis=1)]))
            chunk = np.searchsorted(firsts, rows, "right") - 1
            spans = np.maximum.reduceat(chunk, starts) != np.minimum.reduceat(chunk, starts)
            if not spans.any():
                continue
            sizes = np.diff(np.append(starts, len(rows)))[spans]
            keep = np.repeat(spans, np.diff(np.append(starts, len(rows))))
            found[name] = (rows[keep], np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        self.media = {}
        return found

    def _close_chunk(self) -> None:
        if self.open and sum(p[1] for p in self.open):
            first = self.open[0]
            self.chunks.append(Chunk(len(self.chunks), first[0], sum(p[1] for p in self.open),
                                     first[2], self.open[-1][3], first[4], self.open_digest.hexdigest(), first[5]))
        self.open, self.open_bytes, self.open_digest = [], 0, hashlib.sha256()

    def finish(self, fmt: str, sources: list[str] | None = None) -> ManifestPlan:
        self._close_chunk()
        uri = self.uri
        if not self.rows:
            raise ManifestError(f"manifest {uri} has no rows: expected one row per sample with an 'id' column")
        known = Modality.all()
        present = [m for m in known if m.value in self.counts]
        if not present:
            raise ManifestError(f"manifest {uri} has no modality column: expected any of {', '.join(sorted(known))}")
        shards = -(-self.rows // self.shard_size)
        counts = np.zeros((shards, len(present)), np.int64)
        for j, m in enumerate(present):
            counts[:len(self.counts[m.value]), j] = self.counts[m.value][:shards]
        ignored = [n for n in self.names if n not in set(known)]
        plan = ManifestPlan(uri=uri, base=base_of(uri), fmt=fmt, digest=self.digest.hexdigest(),
                            header=self.header, rows=self.rows, modalities=present, ignored_columns=ignored,
                            shard_size=self.shard_size, counts=counts, chunks=self.chunks, sources=sources or [])
        self._check_unique_ids(plan)
        plan.repeats = self._repeats()
        return plan

    def _check_unique_ids(self, plan: ManifestPlan) -> None:
        hashes = np.sort(np.concatenate(self.hashes))
        repeated = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
        self.hashes = []
        if not repeated:
            return
        # rare: read the ids again to name the duplicates (or to find a mere hash collision)
        seen: dict[str, int] = {}
        for chunk in plan.chunks:
            for value in chunk_ids(plan, chunk, self.options):
                if hash(value) in repeated:
                    seen[value] = seen.get(value, 0) + 1
        dupes = [i for i, n in seen.items() if n > 1]
        if dupes:
            raise ManifestError(f"manifest {self.uri}: {len(dupes)} duplicate id(s), ids must be unique: "
                                f"{', '.join(map(repr, dupes[:20]))}")


def _byte_pieces(fh, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, first line number, bytes) of pieces of about PIECE_BYTES that end at a line end."""
    offset, line, carry = fh.tell(), 2 if scan.header else 1, b""
    while True:
        block = fh.read(PIECE_BYTES)
        if not block:
            break
        scan.digest.update(block)
        data = carry + block
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            _check_line(len(data), line, scan.uri)
            carry = data
            continue
        yield offset, line, data[:cut]
        offset, line, carry = offset + cut, line + data.count(b"\n", 0, cut), data[cut:]
    if carry:
        yield offset, line, carry


def _check_line(size: int, line: int, uri: str) -> None:
    if size > MAX_LINE_BYTES:
        raise ManifestError(f"manifest {uri}: line {line} is longer than {MAX_LINE_BYTES} bytes: expected one "
                            "sample per line")


def _csv_header(fh, uri: str, scan: _Scan) -> list[str]:
    raw = fh.readline(MAX_LINE_BYTES + 1)
    _check_line(len(raw.rstrip(b"\r\n")), 1, uri)
    scan.digest.update(raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {uri}: not valid UTF-8 (byte 0x{raw[e.start]:02x} on line 1)") from None
    return next(_csv.reader(io.StringIO(text)), [])


def _parquet_pieces(fh, uri: str, scan: _Scan) -> Iterator[tuple[int, int, pa.Table, int]]:
    """(row group, first row within it, normalized rows, media bytes they hold) in slices (``plan_slices``): the
    id and modality columns only, media never expanded."""
    while block := fh.read(PIECE_BYTES):
        scan.digest.update(block)
    fh.seek(0)
    try:
        pf, columns, ignored = open_manifest(fh)
    except (pa.ArrowException, OSError) as e:
        raise ManifestError(f"manifest {uri}: not a valid Parquet file: {e}") from None
    scan.header = pf.schema_arrow.names
    for group in range(pf.num_row_groups):
        for skip, table, size in plan_slices(pf, group, columns, CHUNK_BYTES):
            yield group, skip, normalize(table, scan.rows, uri, media=False, ignored=ignored), size


def chunk_ids(plan: ManifestPlan, chunk: Chunk, options: dict[str, Any]) -> list[str]:
    """The ids of ``chunk``'s rows, read again without any media: a tar's keys from its headers (or the .parquet
    beside it when the plan used those), a Parquet file's id column only, a text manifest's lines."""
    if plan.fmt == "webdataset":
        ids: list[str] = []
        for source in plan.sources[chunk.start:chunk.stop]:
            index = sidecar_index(source, options) if plan.sidecars else None
            ids.extend((index or index_shard(source, options))["keys"])
        return ids
    if plan.fmt == "parquet":
        fs, path = filesystem(plan.uri, options)
        with fs.open(path, "rb") as fh:
            table = read_rows(open_manifest(fh)[0], chunk.start, chunk.stop, chunk.skip, chunk.rows, ["id"])
        return checked_ids(table, chunk.first_row, plan.uri).to_pylist()
    return read_chunk(plan, chunk, options).column("id").to_pylist()


# --- a worker's read ---------------------------------------------------------------------------------
def read_chunk(plan: ManifestPlan, chunk: Chunk, options: dict[str, Any], max_member_bytes: int = 1 << 62) -> pa.Table:
    """The normalized rows of ``chunk`` (one ranged read, or its tar shards streamed once). Raises ManifestError
    if the input changed since the plan. Tar members over ``max_member_bytes`` are read errors, left unread."""
    if plan.fmt == "webdataset":
        tables, first = [], chunk.first_row
        for i in range(chunk.start, chunk.stop):
            try:
                table, identity = read_shard(plan.sources[i], options, first, max_member_bytes)
            except TarError as e:
                raise ManifestError(f"input {plan.uri} changed while the job ran: {e}") from None
            _check_shard(plan, i, table, identity)
            tables.append(table)
            first += table.num_rows
        return pa.concat_tables(tables, promote_options="default")
    fs, path = filesystem(plan.uri, options)
    if plan.fmt == "parquet":
        with fs.open(path, "rb") as fh:
            try:
                pf, columns, ignored = open_manifest(fh)
                rows = read_rows(pf, chunk.start, chunk.stop, chunk.skip, chunk.rows, columns)
            except (pa.ArrowException, OSError, ValueError) as e:
                raise ManifestError(f"manifest {plan.uri}: row groups {chunk.start}..{chunk.stop - 1} cannot be read "
                                    f"({type(e).__name__}: {str(e)[:300]}); was it rewritten since planning?") from None
            table = normalize(rows, chunk.first_row, plan.uri, max_member_bytes, ignored=ignored)
    else:
        data = fs.cat_file(path, start=chunk.start, end=chunk.stop)
        if chunk.digest and hashlib.sha256(data).hexdigest() != chunk.digest:
            raise ManifestError(f"manifest {plan.uri} changed while the job ran: lines {chunk.first_line}.. "
                                "differ from the planned ones (rerun to plan the new file)")
        table = parse_piece(data, plan.fmt, plan.header if plan.fmt == "csv" else None, chunk.first_line,
                            chunk.first_row, plan.uri)
    if table.num_rows != chunk.rows:
        raise ManifestError(f"manifest {plan.uri} changed while the job ran: rows {chunk.first_row}.. "
                            f"held {chunk.rows} rows when planned, {table.num_rows} now")
    return table


def _check_shard(plan: ManifestPlan, i: int, table: pa.Table, identity: str) -> None:
    """Raise ManifestError naming shard ``i`` when its read differs from its plan: its samples, or its file."""
    if not plan.source_digests:
        return
    shard, rows = plan.sources[i], int(plan.source_rows[i])
    if table.num_rows != rows:
        what = f"held {rows} samples when planned, {table.num_rows} now"
    elif samples_digest(table, item_mask) != plan.source_digests[32 * i:32 * i + 32].hex():
        what = "holds other keys or members than planned"
    elif version_digest(identity) != int(plan.source_versions[i]):
        what = f"was rewritten since it was planned (now {identity.replace(':', ' bytes, version ', 1)})"
    else:
        return
    if plan.sidecars and "rewritten" not in what:
        raise ManifestError(f"input {plan.uri}: shard {shard} {what}; its keys were planned from img2dataset's "
                            f".parquet beside it ({sidecar_of(shard)}), which must list the tar's samples: rerun "
                            "with tar_index: headers (and overwrite: true) to index the tars themselves")
    raise ManifestError(f"input {plan.uri} changed while the job ran: shard {shard} {what} (rerun to plan it again)")
