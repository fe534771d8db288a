"""The embed job: manifest → decode tasks → frozen-encoder actors → Parquet feature store.

Items of a modality are numbered in manifest order and grouped into shards of ``shard_size``.
Ray Data streams them through decode tasks and an encoder actor pool; the driver gathers each
shard's rows and commits it (feature file, error file, then marker). A rerun skips committed
shards, so an interrupted job resumes without redoing or duplicating work.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ConfigError, EmbedConfig, EncoderConfig, require_paths
from pipeline.embed.stages import EncodeActor, decode_batch
from pipeline.encoders.frozen import read_input_spec
from pipeline.encoders.presets import EncoderRef, resolve_encoder
from pipeline.media.decode import DecodeSettings
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.store.features import ERROR_SCHEMA, STAGES, FeatureStore, features_table
from pipeline.store.sources import Manifest, read_manifest, resolve_uri, storage_options

log = logging.getLogger(__name__)
ITEM_SCHEMA = pa.schema([("id", pa.string()), ("value", pa.string()), ("pre_error", pa.string()),
                         ("shard", pa.int64()), ("seq", pa.int64())])
MAX_BLOCKS = 2000  # bounds the number of input blocks the driver tracks


class ResumeMismatchError(RuntimeError):
    """The output folder holds shards made from a different manifest or encoder setup."""


def run_embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every item of the manifest ``cfg.input`` into the feature store ``cfg.output``.

    Returns the summary (also written to OUT/summary.json). Needs ``ray.init()`` done by the caller.
    """
    require_paths(cfg)
    started = time.time()
    options = storage_options(cfg.storage)
    input_uri, output_uri = _absolute(cfg.input), _absolute(cfg.output)
    manifest = read_manifest(input_uri, options)
    modalities = cfg.modalities or [m for m in Modality.all() if m in manifest.columns]
    absent = [m.value for m in modalities if m not in manifest.columns]
    if absent:
        raise ConfigError(f"modalities: {', '.join(absent)} not in manifest {input_uri} "
                          f"(its modality columns: {', '.join(m.value for m in manifest.columns)})")
    if manifest.ignored_columns:
        log.info("manifest columns ignored (not id or a modality): %s", ", ".join(manifest.ignored_columns))
    ffmpeg = find_ffmpeg(cfg.ffmpeg) if any(m.spec.reads == "file" for m in modalities) else ""
    store = FeatureStore(output_uri, options)
    processed = 0
    for modality in modalities:
        processed += _embed_modality(cfg, modality, manifest, store, options, ffmpeg)
    return _write_summary(store, input_uri, output_uri, time.time() - started, processed)


def build_items(manifest: Manifest, modality: Modality, shard_size: int) -> list[dict[str, Any]]:
    """One item per row that has a value for ``modality``, numbered (seq) and sharded in file order.

    Values of the wrong type or with unusable URIs become items with ``pre_error`` set, so they
    surface as error rows instead of vanishing.
    """
    items = []
    for row_id, value in zip(manifest.ids, manifest.columns[modality]):
        if value is None or (isinstance(value, str) and not value.strip() and not modality.is_inline):
            continue
        pre_error, text = None, None
        if not isinstance(value, str):
            pre_error = f"expected a {'string' if modality.is_inline else 'URI string'}, got {type(value).__name__} {str(value)[:80]!r}"
        elif modality.is_inline:
            text = value
        else:
            try:
                text = resolve_uri(value, manifest.base)
            except ValueError as e:
                pre_error, text = str(e), value
        seq = len(items)
        items.append({"id": row_id, "value": text, "pre_error": pre_error, "shard": seq // shard_size, "seq": seq})
    return items


def _embed_modality(cfg: EmbedConfig, modality: Modality, manifest: Manifest, store: FeatureStore,
                    options: dict[str, Any], ffmpeg: str) -> int:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    items = build_items(manifest, modality, cfg.shard_size)
    if cfg.overwrite:
        store.remove_modality(modality)
    store.remove_stale_temp_files(modality)
    enc, ref = cfg.encoder(modality), resolve_encoder(cfg, modality)
    spec = read_input_spec(ref, enc)
    _guard_resume(store, modality, run_fingerprint(cfg, modality, manifest, len(items), ref, spec),
                  encoder_record(ref, enc, spec))
    done = store.committed_shards(modality)
    todo = [it for it in items if it["shard"] not in done]
    shards = (len(items) + cfg.shard_size - 1) // cfg.shard_size
    log.info("%s: %d items in %d shards; %d shards already committed, %d items to embed with %s",
             modality.value, len(items), shards, len(done), len(todo), ref.name)
    if not todo:
        return 0
    settings = DecodeSettings(modality, spec, cfg.limits, options, ffmpeg)
    table = pa.Table.from_pylist(todo, schema=ITEM_SCHEMA)
    block_rows = max(cfg.decode.batch_size, -(-len(todo) // MAX_BLOCKS))
    ctx = DataContext.get_current()
    previous_timeout = ctx.execution_no_progress_timeout_s
    ctx.execution_no_progress_timeout_s = cfg.no_progress_timeout_s
    try:
        ds = ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, len(todo), block_rows)])
        ds = ds.map_batches(decode_batch, fn_kwargs={"settings": settings}, batch_size=cfg.decode.batch_size,
                            batch_format="pyarrow", num_cpus=cfg.decode.num_cpus)
        ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={"ref": ref, "enc": enc, "settings": settings}, batch_size=enc.batch_size,
                            batch_format="pyarrow", compute=ActorPoolStrategy(size=enc.actors),
                            num_cpus=enc.num_cpus, num_gpus=enc.num_gpus, resources=enc.resources or None)
        _commit_stream(ds, store, modality, ref, enc.tokens, Counter(it["shard"] for it in todo), shards)
    finally:
        ctx.execution_no_progress_timeout_s = previous_timeout
    return len(todo)


def encoder_record(ref: EncoderRef, enc: EncoderConfig, spec: InputSpec) -> dict[str, Any]:
    """What a model artifact needs to rebuild this modality's frozen encoder and its inputs."""
    return {"modality": ref.modality.value, "name": ref.name, "source": ref.source, "revision": ref.revision,
            "build": ref.build, "encoder": enc.model_dump(mode="json"), "input": dataclasses.asdict(spec)}


def _commit_stream(ds, store: FeatureStore, modality: Modality, ref: EncoderRef, k: int,
                   expected: Counter, shards: int) -> None:
    """Gather streamed rows per shard; commit each shard when all its items have arrived."""
    parts: dict[int, list[pa.Table]] = defaultdict(list)
    seen: dict[int, set[int]] = defaultdict(set)
    committed, items_done, last_log, started = 0, 0, 0.0, time.time()
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        shard_col = batch.column("shard").to_numpy()
        for shard in np.unique(shard_col):
            shard = int(shard)
            part = batch.filter(pc.equal(batch.column("shard"), shard))
            parts[shard].append(part)
            seen[shard].update(part.column("seq").to_pylist())  # a retried task may resend rows
            if len(seen[shard]) == expected[shard]:
                _commit(store, modality, ref, k, shard, pa.concat_tables(parts.pop(shard)))
                seen.pop(shard)
                committed += 1
                items_done += expected[shard]
                if time.time() - last_log > 5 or committed == len(expected):
                    last_log = time.time()
                    log.info("%s: committed %d/%d shards this run (%d in all), %d items, %.1f items/s",
                             modality.value, committed, len(expected), shards, items_done,
                             items_done / max(last_log - started, 1e-9))
    if parts:
        missing = sorted(parts)
        raise RuntimeError(f"{modality.value}: the pipeline ended before shards {missing[:10]} were complete")


def _commit(store: FeatureStore, modality: Modality, ref: EncoderRef, k: int, shard: int, rows: pa.Table) -> None:
    rows = rows.sort_by("seq")
    seqs = rows.column("seq").to_numpy()
    first = np.concatenate([[True], seqs[1:] != seqs[:-1]])
    rows = rows.filter(pa.array(first))
    ok = rows.filter(rows.column("ok"))
    bad = rows.filter(pc.invert(rows.column("ok")))
    dim = rows.schema.field("embedding").type.list_size // k
    features = features_table(ok.column("id").to_pylist(), modality.value, ok.column("uri").to_pylist(), ref.name,
                              ok.column("embedding").combine_chunks(), k, dim)
    errors = pa.Table.from_arrays([bad.column("id"), pa.array([modality.value] * bad.num_rows, pa.string()),
                                   bad.column("uri"), bad.column("stage"), bad.column("error")], schema=ERROR_SCHEMA)
    store.commit_shard(modality, shard, features, errors, dim)


RUN_FORMAT = 2  # version of run.json: a store made by another version is not resumed blindly


def run_fingerprint(cfg: EmbedConfig, modality: Modality, manifest: Manifest, items: int, ref: EncoderRef,
                    spec: InputSpec) -> dict[str, Any]:
    """Everything a modality's rows depend on; a rerun resumes only when all of it is unchanged.

    Runtime settings that do not change the rows (actors, batch sizes, CPUs/GPUs, threads) are left out.
    """
    enc = cfg.encoder(modality)
    return _as_json({"format": RUN_FORMAT, "manifest": manifest.uri, "manifest_sha256": manifest.digest, "items": items,
            "shard_size": cfg.shard_size, "encoder": ref.name, "tokens": enc.tokens, "dtype": enc.dtype,
            "precision": enc.precision, "num_frames": enc.num_frames, "max_text_tokens": enc.max_text_tokens,
            "input": dataclasses.asdict(spec), "limits": cfg.limits.model_dump(mode="json")})


def _as_json(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so a stored record compares equal."""
    return json.loads(json.dumps(obj))


def _guard_resume(store: FeatureStore, modality: Modality, fingerprint: dict[str, Any], encoder: dict[str, Any]) -> None:
    """Refuse to mix rows made differently; record a new run (its encoder once, with the fingerprint)."""
    existing = store.run_record(modality)
    if existing is not None and existing != fingerprint:
        detail = "; ".join(f"{k}: was {was!r}, now {now!r}" for k, was, now in _differences(existing, fingerprint))
        raise ResumeMismatchError(
            f"{store.root} already holds {modality.value} features made differently ({detail}). "
            "Pass --overwrite to start over, or choose another --output.")
    if existing is None:
        store.start_run(modality, fingerprint, encoder)


def _differences(was: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs, e.g. ("limits.max_audio_seconds", 60.0, 30.0)."""
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((prefix + key, a, b))
    return out


def _write_summary(store: FeatureStore, input_uri: str, output_uri: str, elapsed: float, processed: int) -> dict[str, Any]:
    per_modality = {}
    for modality in Modality.all():
        run = store.run_record(modality)
        if run is None:
            continue
        markers = store.committed_shards(modality)
        errors = {s: sum(m["errors"].get(s, 0) for m in markers.values()) for s in STAGES}
        features = sum(m["features"] for m in markers.values())
        dims = {m.get("dim") for m in markers.values()}
        per_modality[modality.value] = {
            "items": run["items"], "features": features, "errors": errors, "encoder": run["encoder"],
            "tokens": run["tokens"], "dim": dims.pop() if len(dims) == 1 else None, "dtype": run["dtype"],
            "shards_committed": len(markers), "complete": features + sum(errors.values()) == run["items"]}
    summary = {"input": input_uri, "output": output_uri, "modalities": per_modality,
               "elapsed_s": round(elapsed, 3), "items_this_run": processed,
               "items_per_s": round(processed / elapsed, 3) if elapsed > 0 else None}
    store.write_json("summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [f"embedded {summary['input']} -> {summary['output']}", "",
             f"{'modality':<9}{'items':>8}{'features':>10}{'read':>7}{'decode':>8}{'encode':>8}   K x D      dtype    encoder"]
    for name, m in summary["modalities"].items():
        e = m["errors"]
        lines.append(f"{name:<9}{m['items']:>8}{m['features']:>10}{e['read']:>7}{e['decode']:>8}{e['encode']:>8}   "
                     f"{m['tokens']} x {m['dim']!s:<6} {m['dtype']:<8} {m['encoder']}"
                     + ("" if m["complete"] else "   (incomplete: rerun to resume)"))
    lines += ["", f"this run: {summary['items_this_run']} items in {summary['elapsed_s']:.1f} s"
              + (f" ({summary['items_per_s']:.1f} items/s)" if summary["items_this_run"] else " (all shards were already committed)"),
              f"errors (read/decode/encode) are rows in {summary['output'].rstrip('/')}/errors/*.parquet; "
              f"summary: {summary['output'].rstrip('/')}/summary.json"]
    return "\n".join(lines)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)
