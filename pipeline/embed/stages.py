"""The embed job's Ray Data stages, thin adapters over ``pipeline.item_encoder``.

read tasks     a manifest chunk (one ranged read) → work rows: one per distinct media (or text) of a
               modality in the chunk, naming every (row, id, uri) that references it, plus the rows of
               other chunks that name the same media URI (``MediaLinks``: their vectors come from here)
decode tasks   work rows → decoded arrays, as bytes + shape + dtype (or the read/decode error)
encode actors  every requested modality's frozen encoder, loaded once per actor; they encode, fan each
               vector out to the rows that reference it, write one *part* file per call and modality (a
               *piece* per shard its rows fall in) and return only small commit records (part path, the
               piece's byte range, which rows of the shard it holds)

The part files, and the commit that turns a complete shard's pieces into its feature and error files, are the
store's (``pipeline.store.parts``); the driver's committer (``pipeline.embed.committer``) gathers the records
and runs the commits. No feature byte passes through the driver: it sees commit records (a path, a range and a
bitmap per piece).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import uuid
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import EncoderConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.item_encoder import ItemEncoder, ItemError, decode_raw
from pipeline.media.decode import DecodeSettings
from pipeline.metrics import count_rows
from pipeline.modality import Modality
from pipeline.store.features import FeatureStore
from pipeline.store.manifest import ManifestPlan, read_chunk
from pipeline.store.parts import pack_pieces, part_schema, positions
from pipeline.store.rows import embedded_bytes, item_mask
from pipeline.store.sources import resolve_uri

log = logging.getLogger(__name__)

# rows: the (row, id, uri)s a work row's vector goes to; an id is null where the row belongs to another chunk
# (its id and uri come from that chunk's *linked* work row, which is neither decoded nor encoded)
WORK_SCHEMA = pa.schema([
    ("modality", pa.string()), ("value", pa.string()), ("pre_error", pa.string()), ("rows", pa.list_(pa.int64())),
    ("ids", pa.list_(pa.string())), ("uris", pa.list_(pa.string())), ("data", pa.large_binary()),
    ("linked", pa.bool_()),
])
DECODED_SCHEMA = pa.schema([
    ("modality", pa.string()), ("rows", pa.list_(pa.int64())), ("ids", pa.list_(pa.string())),
    ("uris", pa.list_(pa.string())), ("ok", pa.bool_()), ("stage", pa.string()), ("error", pa.string()),
    ("payload", pa.large_binary()), ("shape", pa.list_(pa.int32())), ("dtype", pa.string()), ("linked", pa.bool_()),
])
# A record per piece: its part file and byte range, ``pieces`` the number of pieces (records) of that part;
# bits: the shard's rows given an id (and a vector, unless linked); vbits: its linked rows given a vector
RECORD_SCHEMA = pa.schema([("modality", pa.string()), ("shard", pa.int64()), ("part", pa.string()),
                           ("offset", pa.int64()), ("length", pa.int64()), ("pieces", pa.int64()),
                           ("bits", pa.binary()), ("vbits", pa.binary())])


# --- read tasks ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class MediaLinks:
    """Items whose media URI was first named in another read chunk (the *lead* item, in a shard still to embed):
    they are not decoded or encoded again; the lead's work row fans its vector (or error) out to them too."""

    followers: np.ndarray  # their rows, ascending
    leads: np.ndarray      # the lead row of each follower
    per_shard: np.ndarray  # followers per shard: the vectors each shard waits for besides its own items

    def __post_init__(self):
        order = np.argsort(self.leads, kind="stable")
        self._from, self._to = self.leads[order], self.followers[order]

    def for_chunk(self, plan: ManifestPlan, index: int) -> dict[str, bytes]:
        """What chunk ``index``'s read task needs (int64 bytes): its rows that are followers, and the
        (lead, follower) pairs whose lead it holds."""
        chunk = plan.chunks[index]
        lo, hi = chunk.first_row, chunk.first_row + chunk.rows
        own = self.followers[np.searchsorted(self.followers, lo):np.searchsorted(self.followers, hi)]
        sends = slice(np.searchsorted(self._from, lo), np.searchsorted(self._from, hi))
        return {"linked": own.tobytes(), "send_from": self._from[sends].tobytes(), "send_to": self._to[sends].tobytes()}


def media_links(plan: ManifestPlan, modality: Modality, todo: np.ndarray) -> MediaLinks:
    """The cross-chunk repeats of ``plan`` (planned with ``repeats``) among shards still to embed: an item of a
    shard in ``todo`` follows the first item naming its URI when that item is in another chunk and its shard
    is in ``todo`` too (if it was committed by an earlier run, the item is embedded in its own chunk)."""
    rows, starts = plan.repeats.get(modality.value, (np.zeros(0, np.int64), np.zeros(1, np.int64)))
    lead = np.repeat(rows[starts[:-1]], np.diff(starts))
    firsts = np.array([c.first_row for c in plan.chunks], np.int64)
    keep = ((np.searchsorted(firsts, rows, "right") != np.searchsorted(firsts, lead, "right"))
            & todo[lead // plan.shard_size] & todo[rows // plan.shard_size])
    order = np.argsort(rows[keep], kind="stable")
    followers, leads = rows[keep][order], lead[keep][order]
    return MediaLinks(followers, leads, np.bincount(followers // plan.shard_size, minlength=plan.shards))


def read_work(batch: dict[str, Any], plan: ManifestPlan, options: dict[str, Any], modality: Modality,
              todo: np.ndarray, dedupe: bool, max_bytes: int, http: bool = False) -> pa.Table:
    """Chunk descriptors (``chunk``, and ``MediaLinks.for_chunk``'s fields where there are links) → the work
    rows of ``modality`` in them, in manifest order. ``todo``: bool per shard, True where the modality's shard is
    still to embed (items of committed shards are left out). Media held in the input over ``max_bytes`` (a tar
    member) is left unread: that item's read error. ``http``: http(s) URLs are items (fetched by the decode
    tasks), not read errors."""
    tables = []
    for i, index in enumerate(batch["chunk"]):
        table = read_chunk(plan, plan.chunks[int(index)], options, max_bytes)
        if modality.value not in table.column_names:
            continue
        mask = item_mask(table, modality) & todo[table.column("row").to_numpy() // plan.shard_size]
        items = table.filter(pa.array(mask))
        linked = np.isin(items.column("row").to_numpy(), _int64s(batch, "linked", i))
        work = work_rows(items.filter(pa.array(~linked)), modality, plan.base, dedupe, http)
        work = _send(work, _int64s(batch, "send_from", i), _int64s(batch, "send_to", i))
        if linked.any():
            follow = _uri_rows(items.filter(pa.array(linked)), modality, plan.base, False, http)
            follow = _work_table(follow.drop_columns(["first"]), modality, linked=True)
            work = pa.concat_tables([work, follow])
            work = work.take(pc.sort_indices(pc.list_element(work.column("rows"), 0)))
        tables.append(work)
    return pa.concat_tables(tables) if tables else WORK_SCHEMA.empty_table()


def _int64s(batch: dict[str, Any], name: str, i: int) -> np.ndarray:
    return np.frombuffer(batch[name][i], np.int64) if name in batch else np.zeros(0, np.int64)


def _send(work: pa.Table, leads: np.ndarray, followers: np.ndarray) -> pa.Table:
    """Add each follower row to the work row holding its lead row (id null: the follower's chunk names it)."""
    if not len(leads):
        return work
    work = work.combine_chunks()
    lengths = pc.list_value_length(work.column("rows")).to_numpy(zero_copy_only=False)
    parent = np.repeat(np.arange(work.num_rows), lengths)
    rows = pc.list_flatten(work.column("rows")).to_numpy()
    at = positions(rows, leads)
    if at is None:
        missing = leads[~np.isin(leads, rows)]
        raise RuntimeError(f"read task: lead rows {missing[:5].tolist()} of linked media are not in their chunk's work")
    uris = pc.list_flatten(work.column("uris").chunk(0))
    owners = np.concatenate([parent, parent[at]])
    grouped = np.argsort(owners, kind="stable")  # each work row's own rows, then its followers
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=work.num_rows))]).astype(np.int32))
    new = {"rows": pa.array(np.concatenate([rows, followers])),
           "ids": pa.concat_arrays([pc.list_flatten(work.column("ids").chunk(0)), pa.nulls(len(followers), pa.string())]),
           "uris": pa.concat_arrays([uris, uris.take(pa.array(at))])}
    for name, values in new.items():
        work = work.set_column(work.schema.get_field_index(name), name,
                               pa.ListArray.from_arrays(offsets, values.take(pa.array(grouped))))
    return work


def work_rows(items: pa.Table, modality: Modality, base: str, dedupe: bool, http: bool = False) -> pa.Table:
    """Normalized manifest rows that are items of ``modality`` → WORK_SCHEMA rows in manifest order.

    A media value is resolved against the manifest's folder (an unusable URI becomes that item's read
    error); with ``dedupe``, items with the same resolved URI (text: the same string) share one work row.
    Media held in the input itself (``<m>:bytes``: Parquet bytes, tar members) carries its bytes (``data``)
    and its name as its uri; with ``dedupe``, such items with the same bytes (SHA-256) share one work row.
    Each (row, id) keeps its own uri (``uris``).
    """
    data, parts = embedded_bytes(items, modality), []
    if data is not None:
        held = pc.fill_null(pc.and_kleene(pc.is_valid(data), pc.is_null(items.column(f"{modality.value}:error"))), False)
        parts.append(_held_rows(items.filter(held), modality, dedupe))
        items = items.filter(pc.invert(held))
    work = pa.concat_tables([*parts, _uri_rows(items, modality, base, dedupe, http)]).sort_by("first")
    return _work_table(work, modality, linked=False)


def _work_table(work: pa.Table, modality: Modality, linked: bool) -> pa.Table:
    n = work.num_rows
    return pa.table({"modality": pa.array([modality.value] * n, pa.string()),
                     **{name: work.column(name) for name in WORK_SCHEMA.names[1:-1]},
                     "linked": pa.array([linked] * n, pa.bool_())}, schema=WORK_SCHEMA)


_COLUMNS = ["value", "pre_error", "rows", "ids", "uris", "first"]


def _held_rows(items: pa.Table, modality: Modality, dedupe: bool) -> pa.Table:
    """The work rows (and ``first``) of items whose bytes the input holds; with ``dedupe``, one per distinct
    content (the first item's name and bytes stand for the rest)."""
    named = items.column(modality.value).combine_chunks()
    data = pc.cast(items.column(f"{modality.value}:bytes"), pa.large_binary())  # not combined: up to 256 MB
    flat = pa.table({"value": named, "uri": named, "pre_error": pa.nulls(items.num_rows, pa.string()),
                     "row": items.column("row"), "id": items.column("id")})
    if not dedupe or items.num_rows < 2:
        return _singletons(flat).append_column("data", data)
    digests = pa.array([hashlib.sha256(b.as_buffer()).digest() for b in data], pa.binary(32))
    groups = flat.append_column("digest", digests).append_column("at", pa.array(np.arange(items.num_rows)))
    groups = groups.group_by("digest", use_threads=False).aggregate(
        [("row", "list"), ("id", "list"), ("uri", "list"), ("at", "min"), ("row", "min")])
    at = groups.column("at_min")
    return pa.table({"value": named.take(at), "pre_error": pa.nulls(groups.num_rows, pa.string()),
                     "rows": groups.column("row_list"), "ids": groups.column("id_list"), "uris": groups.column("uri_list"),
                     "first": groups.column("row_min"), "data": data.take(at)})


def _uri_rows(items: pa.Table, modality: Modality, base: str, dedupe: bool, http: bool) -> pa.Table:
    """The work rows (and ``first``, the row they sort by) of items named by a URI (text: given inline)."""
    n = items.num_rows
    raw, errors = items.column(modality.value), items.column(f"{modality.value}:error")
    if modality.is_inline:
        value, uri, pre_error = raw, pa.nulls(n, pa.string()), errors
    else:
        resolved, problems = [], []
        for text, error in zip(raw.to_pylist(), errors.to_pylist()):
            if error is not None:
                resolved.append(text)
                problems.append(error)
                continue
            try:
                resolved.append(resolve_uri(text, base, http))
                problems.append(None)
            except ValueError as e:
                resolved.append(text)
                problems.append(str(e))
        value = uri = pa.array(resolved, pa.string())
        pre_error = pa.array(problems, pa.string())
    flat = pa.table({"value": value, "uri": uri, "pre_error": pre_error, "row": items.column("row"),
                     "id": items.column("id")})
    good_mask = pc.is_null(flat.column("pre_error"))
    good, bad = flat.filter(good_mask), flat.filter(pc.invert(good_mask))
    if dedupe:
        good = good.group_by(["value", "uri"], use_threads=False).aggregate(
            [("row", "list"), ("id", "list"), ("uri", "list"), ("row", "min")])
        good = good.rename_columns({"row_list": "rows", "id_list": "ids", "uri_list": "uris", "row_min": "first"})
        good = good.append_column("pre_error", pa.nulls(good.num_rows, pa.string()))
    else:
        good = _singletons(good)
    work = pa.concat_tables([good.select(_COLUMNS), _singletons(bad).select(_COLUMNS)])
    return work.append_column("data", pa.nulls(work.num_rows, pa.large_binary()))


def _singletons(table: pa.Table) -> pa.Table:
    n = table.num_rows
    offsets = pa.array(np.arange(n + 1, dtype=np.int32))
    rows = table.column("row").combine_chunks() if n else pa.array([], pa.int64())
    ids = table.column("id").combine_chunks() if n else pa.array([], pa.string())
    uris = table.column("uri").combine_chunks() if n else pa.array([], pa.string())
    return pa.table({"value": table.column("value"), "pre_error": table.column("pre_error"),
                     "rows": pa.ListArray.from_arrays(offsets, rows), "ids": pa.ListArray.from_arrays(offsets, ids),
                     "uris": pa.ListArray.from_arrays(offsets, uris), "first": rows})


# --- decode tasks --------------------------------------------------------------------------------------
def decode_work(batch: pa.Table, settings: dict[str, DecodeSettings], block_bytes: int | None = None
                ) -> Iterator[pa.Table]:
    """Work rows → DECODED_SCHEMA rows: the decoded item packed as bytes, or the read/decode error. Yields a block
    before its decoded bytes would pass ``block_bytes`` (None: one block; an item larger than that alone is a block
    of its own), so a task of many rows holds at most about that much."""
    n = batch.num_rows
    if not n:
        yield DECODED_SCHEMA.empty_table()
        return
    block = _Block(block_bytes)
    linked = batch.column("linked").to_pylist()
    first = 0
    for i, (modality, value, pre_error, data) in enumerate(zip(
            batch.column("modality").to_pylist(), batch.column("value").to_pylist(),
            batch.column("pre_error").to_pylist(), batch.column("data").to_pylist())):
        packed, failed, why = (_EMPTY, [], ""), "", None
        if linked[i]:  # its vector (or error) comes from its lead's work row: not decoded, not ok, no error
            pass       # (the actor writes it without an outcome; the commit joins it to the lead's)
        elif pre_error is not None:
            failed, why = "read", pre_error
        else:
            try:
                packed = _pack(decode_raw(value if data is None else data, settings[modality]))
            except ItemError as e:
                failed, why = e.stage, e.reason
        if block_bytes and block.rows and block.used + len(packed[0]) > block_bytes:
            yield block.table(batch.slice(first, i - first))
            first, block = i, _Block(block_bytes)
        block.add(packed, why is None and not linked[i], failed, None if why is None else f"{modality}: {why}")
        packed = None  # the decoded array is freed now, so the next item's reuses its memory
    yield block.table(batch.slice(first, n - first))


class _Block:
    """A block of decoded rows being filled: each item's bytes copied into one buffer as it is decoded (one copy,
    and the item's own array freed at once, so the next decode reuses that memory instead of faulting in fresh
    pages). The buffer comes from Arrow's memory pool, which keeps freed memory for the next block: a fresh
    allocation of tens of MB is mapped anew each time, and its page faults cost more than the copy (measured: 7 ms
    vs 11-80 ms); of its ``capacity`` only the pages written are ever touched."""

    def __init__(self, capacity: int | None):
        self.buffer = pa.allocate_buffer(capacity or 1 << 20, resizable=True)
        self.view = np.frombuffer(self.buffer, np.uint8)
        self.offsets, self.used = [0], 0
        self.ok, self.stage, self.error, self.shape, self.dtype = [], [], [], [], []

    @property
    def rows(self) -> int:
        return len(self.ok)

    def add(self, packed: tuple[np.ndarray, list[int], str], ok: bool, stage: str, error: str | None) -> None:
        item = packed[0]
        end = self.used + len(item)
        if end > self.buffer.size:  # one item larger than a block, or text past 1 MB in a block without a size
            self.buffer.resize(max(end, 2 * self.buffer.size))
            self.view = np.frombuffer(self.buffer, np.uint8)
        self.view[self.used:end] = item
        self.offsets.append(end)
        self.used = end
        self.ok.append(ok)
        self.stage.append(stage)
        self.error.append(error)
        self.shape.append(packed[1])
        self.dtype.append(packed[2])

    def table(self, part: pa.Table) -> pa.Table:
        """The block as DECODED_SCHEMA rows, ``part`` being its work rows."""
        payload = pa.LargeBinaryArray.from_buffers(pa.large_binary(), self.rows, [
            None, pa.py_buffer(np.array(self.offsets, np.int64)), self.buffer.slice(0, self.used)])
        return pa.table({"modality": part.column("modality"), "rows": part.column("rows"), "ids": part.column("ids"),
                         "uris": part.column("uris"), "ok": pa.array(self.ok, pa.bool_()),
                         "stage": pa.array(self.stage, pa.string()), "error": pa.array(self.error, pa.string()),
                         "payload": payload, "shape": pa.array(self.shape, pa.list_(pa.int32())),
                         "dtype": pa.array(self.dtype, pa.string()), "linked": part.column("linked")},
                        schema=DECODED_SCHEMA)


_EMPTY = np.zeros(0, np.uint8)


def _pack(array: Any) -> tuple[np.ndarray, list[int], str]:
    """A decoded item as (its bytes as a flat uint8 view, shape, dtype); text as its UTF-8 bytes and "str"."""
    if isinstance(array, str):
        return np.frombuffer(array.encode("utf-8"), np.uint8), [], "str"
    array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8), list(array.shape), array.dtype.str


def unpack_column(payload: pa.ChunkedArray | pa.Array, shape: pa.ChunkedArray | pa.Array,
                  dtype: pa.ChunkedArray | pa.Array, rows: list[int]) -> list[Any]:
    """Inverse of the decode stage's packing for ``rows`` of a block: str for text, else the decoded array, a view
    of the block's buffer (no copy; read-only when the block came through the object store)."""
    if isinstance(payload, pa.ChunkedArray):  # a block's column is one chunk: taken as it is (combining copies)
        payload = payload.chunk(0) if payload.num_chunks == 1 else payload.combine_chunks()
    offsets = np.frombuffer(payload.buffers()[1], np.int64)[payload.offset:payload.offset + len(payload) + 1]
    data = payload.buffers()[2]
    values = np.frombuffer(data, np.uint8) if data is not None else _EMPTY
    shapes, dtypes = shape.to_pylist(), dtype.to_pylist()
    out = []
    for i in rows:
        raw = values[offsets[i]:offsets[i + 1]]
        if dtypes[i] == "str":
            out.append(raw.tobytes().decode("utf-8"))
        else:
            out.append(raw.view(np.dtype(dtypes[i])).reshape(shapes[i]))
    return out


# --- encoder actors ------------------------------------------------------------------------------------
CPU_CONCURRENT_BATCHES = 2  # an encoder actor's batches at once on CPU when concurrent_batches is null


def cpu_threads_per_batch(calls: int) -> int:
    """torch threads for each of an actor's ``calls`` concurrent batches on CPU: the node's cores, shared."""
    return max(1, (os.cpu_count() or 1) // calls)


class EncodeActor:
    """Loads every requested modality's ItemEncoder once (in ``__init__``); each call encodes the decoded rows
    of a batch (or, with ``block_bytes``, decodes a batch of work rows first, a block of that many decoded bytes at
    a time: decode.fused), writes them as part files and returns their commit records. Ray Data runs up to
    ``calls`` calls at once in threads (the model is shared; nothing else is kept between calls); on CPU, each gets
    ``threads`` torch threads (null: the node's cores / ``calls``) unless ``torch_threads`` says otherwise."""

    def __init__(self, encoders: dict[str, tuple[EncoderRef, EncoderConfig]], settings: dict[str, DecodeSettings],
                 output: str, storage: dict[str, Any], shard_size: int, calls: int = 1, threads: int | None = None,
                 block_bytes: int | None = None):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # this worker's console: no per-load reports or bars
        hf_logging.disable_progress_bar()
        self.store, self.shard_size = FeatureStore(output, storage), shard_size
        self.settings, self.block_bytes = settings, block_bytes
        self.items, self.schemas = {}, {}
        for name, (ref, enc) in encoders.items():
            if enc.torch_threads is None and enc.num_gpus == 0:
                enc = enc.model_copy(update={"torch_threads": threads or cpu_threads_per_batch(calls)})
            dtype = np.float16 if enc.dtype == "float16" else np.float32
            self.items[name] = ItemEncoder(ref, enc, settings[name], dtype=dtype, batch_size=enc.batch_size)
            self.schemas[name] = part_schema(enc.stored_tokens, self.items[name].frozen.dim, enc.dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.block_bytes is None:  # decoded rows, from decode tasks
            return self._encode_and_write(batch)
        # fused (decode.fused): work rows, decoded here a block of ``block_bytes`` at a time
        return pa.concat_tables([self._encode_and_write(b) for b in decode_work(batch, self.settings, self.block_bytes)])

    def _encode_and_write(self, batch: pa.Table) -> pa.Table:
        records = []
        for name in pc.unique(batch.column("modality")).to_pylist():
            rows = batch.filter(pc.equal(batch.column("modality"), name))
            records += self._write_parts(name, self._encode(name, rows), rows)
        return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)

    def _encode(self, name: str, rows: pa.Table) -> tuple[pa.Array, list, list]:
        """Per work row: its vector (null where it failed), its failing stage and error."""
        items, schema = self.items[name], self.schemas[name]
        width = schema.field("embedding").type.list_size
        ok = rows.column("ok").to_pylist()
        todo = [i for i, good in enumerate(ok) if good]
        payload, shape, dtype = rows.column("payload"), rows.column("shape"), rows.column("dtype")
        decoded = unpack_column(payload, shape, dtype, todo)
        flat = np.zeros((rows.num_rows, width), items.dtype)
        valid = np.zeros(rows.num_rows, bool)
        stage, error = rows.column("stage").to_pylist(), rows.column("error").to_pylist()
        for i, result in zip(todo, items.encode(decoded)):
            if isinstance(result, ItemError):
                stage[i], error[i] = "encode", result.reason
            else:
                flat[i], valid[i] = result.vector, True
        values = pa.array(flat.ravel(), type=schema.field("embedding").type.value_type)
        return pa.FixedSizeListArray.from_arrays(values, width, mask=pa.array(~valid)), stage, error

    def _write_parts(self, name: str, encoded: tuple[pa.Array, list, list], rows: pa.Table) -> list[dict]:
        """Fan each work row out to its (row, id)s, cut them into a piece per shard, write the pieces as one part
        file (one write however scattered the rows: a call's repeats may touch hundreds of shards); a record
        per piece."""
        embedding, stage, error = encoded
        lengths = pc.list_value_length(rows.column("rows")).to_numpy(zero_copy_only=False)
        parent = np.repeat(np.arange(rows.num_rows), lengths)
        first = np.zeros(len(parent), bool)
        first[np.cumsum(lengths) - lengths] = True
        row_numbers = pc.list_flatten(rows.column("rows")).to_numpy()
        valid = pc.is_valid(embedding).to_numpy(zero_copy_only=False)
        take = pa.array(parent)
        ids = pc.list_flatten(rows.column("ids"))
        table = pa.Table.from_arrays([
            ids, pc.list_flatten(rows.column("uris")), pa.array(row_numbers), pa.array(first),
            pa.array(valid[parent]), pa.array(stage, pa.string()).take(take), pa.array(error, pa.string()).take(take),
            embedding.take(take), rows.column("linked").take(take)], schema=self.schemas[name])
        count_rows("embed", name, valid[parent], np.asarray(stage, object)[parent])
        order = np.argsort(row_numbers, kind="stable")
        table, row_numbers = table.take(pa.array(order)), row_numbers[order]
        shards, named = row_numbers // self.shard_size, pc.is_valid(table.column("id")).to_numpy(zero_copy_only=False)
        cuts = np.flatnonzero(np.diff(shards)) + 1
        starts, stops = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(shards)]])
        data, ranges = pack_pieces([table.slice(a, b - a) for a, b in zip(starts, stops)])
        part = f"{self.store.parts_dir(name)}/{uuid.uuid4().hex}.arrows"
        self.store.write_bytes_atomic(part, data)
        return [{"modality": name, "shard": int(shards[a]), "part": part, "offset": offset, "length": length,
                 "pieces": len(ranges), "bits": self._bits(row_numbers[a:b][named[a:b]]),
                 "vbits": self._bits(row_numbers[a:b][~named[a:b]])}
                for a, b, (offset, length) in zip(starts, stops, ranges)]

    def _bits(self, rows: np.ndarray) -> bytes:
        bits = np.zeros(self.shard_size, bool)
        bits[rows % self.shard_size] = True
        return np.packbits(bits).tobytes()
