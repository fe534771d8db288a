"""The index job: project a feature store through a model artifact and write searchable segments.

Projection runs in a Ray Data actor pool over the store's committed shards (one shard per call: the actor reads
and checks it, projects it, writes its vectors and their marker; only counts come back to the driver). Each run
then builds one new segment per modality over the shards it projected, in one Ray task sized by
``ann.build_cpus``. A rerun resumes: shards with a marker are not projected again, and shards already in a
segment are not added again. See ``pipeline.index.segments`` for the layout.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.artifact import read_artifact
from pipeline.config import ConfigError
from pipeline.index.config import IndexConfig
from pipeline.index.metadata import check_columns, read_metadata
from pipeline.index.segments import (ANN_FILES, FORMAT, IndexMismatchError, arrow_file_bytes, build_ann,
                                     model_fingerprint, npy_bytes, segment_name, store_fingerprint, table_vectors,
                                     vectors_table)
from pipeline.store.features import FeatureStore, embeddings, read_shard
from pipeline.store.integrity import json_object
from pipeline.store.sources import storage_options

log = logging.getLogger(__name__)

PROGRESS_S = 10.0  # how often the projection reports its progress


class Projector:
    """A projection actor: the model's adapters and Universal Projection (no frozen encoder is loaded)."""

    def __init__(self, model: str, features: str, output: str, options: dict[str, Any], sample: dict[str, Any]):
        import torch

        from pipeline.inference import load_model

        torch.set_num_threads(1)
        self.model = load_model(model)
        self.store, self.out = FeatureStore(features, options), FeatureStore(output, options)
        self.sample = sample

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.metrics import job_metrics

        rows = [project_shard(self.model, self.store, self.out, str(m), int(s), self.sample)
                for m, s in zip(batch["modality"], batch["shard"])]
        for m, n in zip(batch["modality"], rows):
            job_metrics().inc("oneencoder_job_rows", n, job="index", modality=str(m))
        return {"modality": batch["modality"], "shard": batch["shard"], "rows": np.array(rows, np.int64)}


def project_shard(model: Any, store: FeatureStore, out: FeatureStore, modality: str, shard: int,
                  sample: dict[str, Any]) -> int:
    """Project feature shard ``shard`` of ``modality``: write its vectors and its calibration sample (the rows whose
    id hash is below ``sample["fractions"][modality]``, seed ``sample["seed"]``), then its marker. Returns its rows."""
    from pipeline.index.calibration import id_fractions

    table, marker = read_shard(store, modality, shard)
    vectors = model.project(embeddings(table), modality)  # float32 a chunk at a time, in project
    vt = vectors_table(table.column("id").combine_chunks(), table.column("uri").combine_chunks(), vectors)
    out.write_table(vector_file(modality, shard), vt)
    drawn = id_fractions(vt.column("id").to_pylist(), sample["seed"])
    keep = np.flatnonzero(drawn < sample["fractions"][modality])
    out.write_table(sample_file(modality, shard),
                    vt.take(pa.array(keep, pa.int64())).append_column("fraction", pa.array(drawn[keep], pa.float64())))
    out.write_json(marker_file(modality, shard), {"rows": table.num_rows, "source_committed_at": marker["committed_at"]})
    return table.num_rows


def sample_file(modality: str, shard: int) -> str:
    return f"sample/{modality}/{FeatureStore.shard_name(shard)}.parquet"


def _at_width(vectors: np.ndarray, width: int) -> np.ndarray:
    from pipeline.index.compact import prefix

    return vectors if vectors.shape[1] == width else prefix(vectors, width)


def calibrate(output: str, options: dict[str, Any], fractions: dict[str, float], width: int) -> dict[str, Any]:
    """Fit the calibration and the query banks on the sample files (each modality's rows below its current
    fraction: a store that grew samples less), write ``bank/<modality>.npy``; returns index.json's ``calibration``."""
    from pipeline.index.calibration import fit

    out = FeatureStore(output, options)
    sample = {}
    for m, fraction in fractions.items():
        files = [out._p(f"sample/{m}/{name}") for name in sorted(out.list(f"sample/{m}")) if name.endswith(".parquet")]
        if not files:
            continue
        table = pa.concat_tables([pq.read_table(f, filesystem=out.fs) for f in files])
        table = table.filter(pc.less(table.column("fraction"), fraction))
        sample[m] = (table.column("id").to_pylist(), _at_width(table_vectors(table), width))
    cal = fit(sample)
    for m, bank in cal.banks.items():
        out.write_bytes_atomic(f"bank/{m}.npy", npy_bytes(bank))
    return {**cal.record(), "sample": {m: len(ids) for m, (ids, _) in sample.items()}}


def vector_file(modality: str, shard: int) -> str:
    return f"vectors/{modality}/{FeatureStore.shard_name(shard)}.parquet"


def marker_file(modality: str, shard: int) -> str:
    return f"_progress/{modality}/{FeatureStore.shard_name(shard)}.json"


def build_segment(output: str, options: dict[str, Any], modality: str, number: int, shards: list[int],
                  ann: dict[str, Any], threads: int, width: int, metadata: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Segment ``number`` of ``modality`` over ``shards``' vectors (cut to ``width``, renormalised): its files, then
    segment.json. Returns the record. ``metadata`` ({"manifest", "columns"}): columns read from the manifest for
    the segment's ids, kept in ids.arrow."""
    out = FeatureStore(output, options)
    tables = [pq.read_table(out._p(vector_file(modality, s)), filesystem=out.fs) for s in shards]
    table = pa.concat_tables(tables)
    vectors = _at_width(table_vectors(table), width)
    params = dict(ann)
    folder = f"segments/{modality}/{segment_name(number)}"
    started = time.time()
    out.write_bytes_atomic(f"{folder}/vectors.npy", npy_bytes(vectors))
    ids = table.select(["id", "uri"]).combine_chunks()
    if metadata:
        extra = read_metadata(metadata["manifest"], metadata["columns"], ids.column("id").combine_chunks(), options)
        for name in extra.column_names:
            ids = ids.append_column(name, extra.column(name))
    out.write_bytes_atomic(f"{folder}/ids.arrow", arrow_file_bytes(ids))
    if params["kind"] in ANN_FILES:
        out.write_bytes_atomic(f"{folder}/{ANN_FILES[params['kind']]}", build_ann(vectors, params, threads))
    record = {"shards": shards, "rows": int(table.num_rows), "ann": params, "build_s": round(time.time() - started, 3)}
    out.write_json(f"{folder}/segment.json", record)
    return record


def run_index(cfg: IndexConfig) -> dict[str, Any]:
    """Index the feature store ``cfg.features`` for the model ``cfg.model`` into ``cfg.output``; returns the
    summary (also in OUT/index.json). Needs ``ray.init()`` done by the caller."""
    import ray
    from ray.data import ActorPoolStrategy

    started = time.time()
    options = storage_options(cfg.storage)
    artifact = read_artifact(cfg.model)
    store, out = FeatureStore(cfg.features, options), FeatureStore(cfg.output, options)
    modalities = _modalities(cfg, artifact, store)
    record = _record(cfg, out, store, modalities)
    try:  # the index parameters against the searched width, before any work
        cfg.ann.check_width(record["width"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out.write_json("index.json", record)

    sample = _sample_plan(artifact, store, modalities)
    pending = [(m, s) for m in modalities for s in _todo(store, out, m)]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if pending:
        actors = min(cfg.actors or max(1, cpus), len(pending))
        log.info("projecting %d feature shards (%s) with %d actors", len(pending),
                 ", ".join(f"{m} {sum(1 for p in pending if p[0] == m)}" for m in modalities), actors)
        ds = ray.data.from_items([{"modality": m, "shard": s} for m, s in pending])
        ds = ds.map_batches(Projector, batch_size=1, num_cpus=1, compute=ActorPoolStrategy(min_size=1, max_size=actors),
                            fn_constructor_kwargs={"model": cfg.model, "features": cfg.features, "output": cfg.output,
                                                   "options": options, "sample": sample})
        done = rows = 0
        last = time.time()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            done, rows = done + len(batch["shard"]), rows + int(batch["rows"].sum())
            if time.time() - last >= PROGRESS_S or done == len(pending):
                log.info("projected %d/%d shards, %d vectors, %.0f vectors/s", done, len(pending), rows,
                         rows / max(time.time() - started, 1e-9))
                last = time.time()

    # a task runs on one node: at most the largest node's CPUs (the cluster's total would never be scheduled)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    threads = max(1, int(min(cfg.ann.build_cpus or node_cpus, node_cpus)))
    build = ray.remote(build_segment).options(num_cpus=threads)
    for m in modalities:
        entry = record["modalities"][m]
        indexed = {s for seg in entry["segment_shards"] for s in seg}
        markers = _projection_markers(out, m)
        new = [s for s in sorted(markers) if s not in indexed]
        for group in _segments_of(new, {s: markers[s]["rows"] for s in new}, cfg.ann.segment_rows):
            number = len(entry["segments"])
            params = cfg.ann.chosen(sum(markers[s]["rows"] for s in group), record["width"])
            metadata = ({"manifest": store.run_record(m)["manifest"], "columns": list(cfg.metadata)}
                        if cfg.metadata else None)
            seg = ray.get(build.remote(cfg.output, options, m, number, group, params, threads, record["width"],
                                       metadata))
            log.info("%s: segment %s, %d vectors (%s) built in %.1f s", m, segment_name(number), seg["rows"],
                     " ".join(str(params[k]) for k in ("kind", "precision") if k in params), seg["build_s"])
            entry["segments"].append(segment_name(number))
            entry["segment_shards"].append(group)
            entry["rows"] += seg["rows"]
            out.write_json("index.json", record)  # each segment is listed once it is whole
    if pending or "calibration" not in record:
        record["calibration"] = ray.get(ray.remote(calibrate).remote(cfg.output, options, sample["fractions"],
                                                                     record["width"]))
        pairs = record["calibration"]["pairs"]
        log.info("calibrated %d modality pairs on %s sample items%s", len(pairs),
                 ", ".join(f"{m} {n}" for m, n in record["calibration"]["sample"].items()),
                 "" if pairs else " (no pair shares enough sample ids: merged searches rank by cosine)")
    record["seconds"] = round(time.time() - started, 3)
    out.write_json("index.json", record)
    return record


def _sample_plan(artifact: Any, store: FeatureStore, modalities: list[str]) -> dict[str, Any]:
    """Which ids each modality's calibration sample holds: those the model held out of training (its val_fraction
    and seed), thinned by the same hash to about SAMPLE_ROWS of the modality's committed rows."""
    from pipeline.index.calibration import sample_fraction

    held, seed = artifact.held_out
    rows = {m: sum(int(marker["features"]) for marker in store.committed_shards(m).values()) for m in modalities}
    return {"seed": seed, "fractions": {m: sample_fraction(held, rows[m]) for m in modalities}}


def _modalities(cfg: IndexConfig, artifact: Any, store: FeatureStore) -> list[str]:
    in_store = [m for m in artifact.modalities if store.run_record(m) is not None]
    wanted = [m.value for m in cfg.modalities] if cfg.modalities else in_store
    for m in wanted:
        if m not in artifact.modalities:
            raise ConfigError(f"modalities: {m} is not a modality of model {cfg.model} "
                              f"(it has {', '.join(artifact.modalities)})")
        if store.run_record(m) is None:
            raise ConfigError(f"modalities: feature store {cfg.features} has no {m} features "
                              f"(it has {', '.join(store.modalities()) or 'none'})")
        why = artifact.features_mismatch(store, m)
        if why:
            raise IndexMismatchError(f"feature store {cfg.features} cannot be indexed for model {cfg.model}: {why}")
        if cfg.width is not None and cfg.width not in artifact.widths(m):
            raise ConfigError(f"width={cfg.width}: model {cfg.model}'s {m} vectors were trained for widths "
                              f"{', '.join(map(str, artifact.widths(m)))} only (stages[].loss.matryoshka when training)")
    for m in wanted if cfg.metadata else []:
        manifest = (store.run_record(m) or {}).get("manifest")
        if not manifest:
            raise ConfigError(f"metadata: feature store {cfg.features}'s {m} run names no manifest to read columns from")
        check_columns(manifest, cfg.metadata, storage_options(cfg.storage))
    if not wanted:
        raise ConfigError(f"feature store {cfg.features} has no features of any modality of model {cfg.model} "
                          f"({', '.join(artifact.modalities)})")
    return wanted


def _record(cfg: IndexConfig, out: FeatureStore, store: FeatureStore, modalities: list[str]) -> dict[str, Any]:
    """index.json as this run starts: the previous run's (checked to be of the same model and store), or a new one."""
    model = {"path": cfg.model, "sha256": model_fingerprint(cfg.model)}
    sources = {m: store_fingerprint(store.run_record(m), store.encoder_record(m)) for m in modalities}
    old = out.read_json("index.json")
    if old is None:
        return {"format": FORMAT, "model": model, "features": cfg.features, "dim": _dim(cfg.model),
                "width": cfg.width or _dim(cfg.model), "metadata": list(cfg.metadata or []),
                "modalities": {m: {"store": sources[m], "segments": [], "segment_shards": [], "rows": 0}
                               for m in modalities}}
    where = out.where("index.json")
    if old.get("format") != FORMAT:
        raise IndexMismatchError(f"{where}: not a OneEncoder index (format {old.get('format')!r}, expected {FORMAT!r}); "
                                 "choose another --output")
    if old["model"]["sha256"] != model["sha256"]:
        raise IndexMismatchError(f"{where} was built from model {old['model']['path']} (sha256 "
                                 f"{old['model']['sha256'][:12]}), not {cfg.model} (sha256 {model['sha256'][:12]}): "
                                 "choose another --output for this model's index")
    width = cfg.width or _dim(cfg.model)
    if old.get("width", old["dim"]) != width:
        raise IndexMismatchError(f"{where} searches {old.get('width', old['dim'])}-wide vectors, not {width} (width): "
                                 "choose another --output for an index at another width")
    if old.get("metadata", []) != list(cfg.metadata or []):
        raise IndexMismatchError(f"{where} keeps metadata columns {old.get('metadata', [])}, not "
                                 f"{list(cfg.metadata or [])} (metadata): its segments would differ; choose another "
                                 "--output, or rerun with the same columns")
    for m in modalities:
        entry = old["modalities"].setdefault(m, {"store": sources[m], "segments": [], "segment_shards": [], "rows": 0})
        if entry["store"] != sources[m]:
            raise IndexMismatchError(f"{where}: its {m} vectors come from another embed run than {cfg.features}'s "
                                     f"(store fingerprint {entry['store'][:12]}, now {sources[m][:12]}): the store "
                                     "was re-embedded with other settings; choose another --output")
    old["features"] = cfg.features
    return old


def _dim(model_dir: str) -> int:
    return int(read_artifact(model_dir).model["d"])


def _segments_of(shards: list[int], rows: dict[int, int], most: int) -> list[list[int]]:
    """``shards`` (in order) cut into groups of at most ``most`` rows (a shard larger than that alone)."""
    groups: list[list[int]] = []
    total = 0
    for s in shards:
        if not groups or total + rows[s] > most:
            groups.append([])
            total = 0
        groups[-1].append(s)
        total += rows[s]
    return groups


def _projection_markers(out: FeatureStore, modality: str) -> dict[int, dict]:
    """Shard → its projection marker, read in one ``cat`` call (many requests in flight on S3)."""
    names = {i: name for name in out.list(f"_progress/{modality}")
             if (i := FeatureStore.shard_index(name)) is not None and name == f"{FeatureStore.shard_name(i)}.json"}
    paths = {out._p(marker_file(modality, i)): i for i in names}
    found = out.fs.cat(list(paths), on_error="omit") if paths else {}
    by_path = {os.path.basename(p.rstrip("/")): data for p, data in found.items()}
    return {i: json_object(by_path[names[i]], out.where(marker_file(modality, i)))
            for i in sorted(names) if names[i] in by_path}


def _todo(store: FeatureStore, out: FeatureStore, modality: str) -> list[int]:
    """The committed shards of ``modality`` with feature rows that have no projection marker yet; IndexMismatchError
    when a projected shard was committed again since (its vectors would be stale)."""
    done = _projection_markers(out, modality)
    todo = []
    for shard, marker in store.committed_shards(modality).items():
        if not marker["features"]:
            continue
        if shard not in done:
            todo.append(shard)
            continue
        seen = done[shard]
        if seen.get("source_committed_at") != marker["committed_at"]:
            raise IndexMismatchError(f"{store.where(store.feature_file(modality, shard))} was committed again after "
                                     f"{out.where(vector_file(modality, shard))} was projected from it: rebuild the "
                                     "index into a new --output")
    return todo


def format_summary(record: dict[str, Any]) -> str:
    width = record.get("width", record["dim"])
    lines = [f"index of model {record['model']['path']} over {record['features']} ({record['dim']}-d vectors"
             + (f", searched at their first {width}" if width != record["dim"] else "") + "):"]
    for m, entry in record["modalities"].items():
        lines.append(f"  {m}: {entry['rows']} vectors in {len(entry['segments'])} segment"
                     f"{'s' * (len(entry['segments']) != 1)}")
    cal = record.get("calibration")
    if cal:
        lines.append(f"  calibrated {len(cal['pairs'])} modality pairs on "
                     + ", ".join(f"{n} {m}" for m, n in cal["sample"].items()) + " held-out items")
    if "seconds" in record:
        lines.append(f"  done in {record['seconds']:.1f} s")
    return "\n".join(lines)
