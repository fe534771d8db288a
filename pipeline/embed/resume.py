"""What a run of the embed job records and what a rerun checks: the run record of each modality (the fingerprint
of everything its rows depend on, and the record of its encoder) that a rerun must match to resume, and the
run's summary (OUT/summary.json, and the one-screen text printed at the end).
"""
from __future__ import annotations

import dataclasses
import json
import resource
from typing import Any

from pipeline.embed.config import EmbedConfig
from pipeline.encoders.presets import EncoderRef
from pipeline.modalities import InputSpec
from pipeline.modality import Modality
from pipeline.store.features import STAGES, FeatureStore
from pipeline.store.manifest import ManifestPlan


class ResumeMismatchError(RuntimeError):
    """The output folder holds shards made from a different manifest or encoder setup."""


RUN_FORMAT = 3  # version of run.json: a store made by another version is not resumed blindly (3: shards of rows)


def run_fingerprint(cfg: EmbedConfig, modality: Modality, plan: ManifestPlan, ref: EncoderRef,
                    spec: InputSpec) -> dict[str, Any]:
    """Everything a modality's rows depend on; a rerun resumes only when all of it is unchanged.

    Runtime settings that do not change the rows (actors, batch sizes, CPUs/GPUs, threads) are left out.
    """
    enc = cfg.encoder(modality)
    return _as_json({"format": RUN_FORMAT, "manifest": plan.uri, "manifest_sha256": plan.digest,
            "items": plan.items(modality),
            "shard_size": cfg.shard_size, "encoder": ref.name, "tokens": enc.tokens, "dtype": enc.dtype,
            "precision": enc.precision, "num_frames": enc.num_frames, "max_text_tokens": enc.max_text_tokens,
            "input": dataclasses.asdict(spec), "limits": cfg.limits.model_dump(mode="json"),
            **({"max_tokens": enc.max_tokens} if enc.sequence else {})})  # only then: older run.json stay equal


def _as_json(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so a stored record compares equal."""
    return json.loads(json.dumps(obj))


def guard_resume(store: FeatureStore, modality: Modality, fingerprint: dict[str, Any], encoder: dict[str, Any]) -> None:
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


def write_summary(store: FeatureStore, input_uri: str, output_uri: str, elapsed: float, processed: int,
                   received: int, planned: float) -> dict[str, Any]:
    per_modality = {}
    for modality in Modality.all():
        run = store.run_record(modality)
        if run is None:
            continue
        markers = store.committed_shards(modality)
        errors = {s: sum(m["errors"].get(s, 0) for m in markers.values()) for s in STAGES}
        features = sum(m["features"] for m in markers.values())
        dims = {m.get("dim") for m in markers.values()}
        unique = [m.get("unique") for m in markers.values()]
        per_modality[modality.value] = {
            "items": run["items"], "unique": sum(unique) if None not in unique else None,
            "features": features, "errors": errors, "encoder": run["encoder"],
            "tokens": run["tokens"], **({"max_tokens": run.get("max_tokens")} if run["tokens"] == "all" else {}), "dim": dims.pop() if len(dims) == 1 else None, "dtype": run["dtype"],
            "shards_committed": len(markers), "complete": features + sum(errors.values()) == run["items"]}
    summary = {"input": input_uri, "output": output_uri, "modalities": per_modality,
               "elapsed_s": round(elapsed, 3), "plan_s": round(planned, 3), "items_this_run": processed,
               "driver_received_bytes": received,
               "driver_cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 3),
               "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "items_per_s": round(processed / elapsed, 3) if elapsed > 0 else None}
    store.write_json("summary.json", summary)
    return summary


def _k(modality: dict[str, Any]) -> str:
    """K as the summary prints it: ``4``, or ``all<=128`` for token sequences up to 128."""
    return f"all<={modality.get('max_tokens')}" if modality["tokens"] == "all" else str(modality["tokens"])


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [f"embedded {summary['input']} -> {summary['output']}", "",
             f"{'modality':<9}{'items':>8}{'unique':>8}{'features':>10}{'read':>7}{'decode':>8}{'encode':>8}   "
             "K x D      dtype    encoder"]
    for name, m in summary["modalities"].items():
        e = m["errors"]
        unique = "?" if m["unique"] is None else m["unique"]
        lines.append(f"{name:<9}{m['items']:>8}{unique:>8}{m['features']:>10}{e['read']:>7}{e['decode']:>8}{e['encode']:>8}   "
                     f"{_k(m)} x {m['dim']!s:<6} {m['dtype']:<8} {m['encoder']}"
                     + ("" if m["complete"] else "   (incomplete: rerun to resume)"))
    lines += ["", f"this run: {summary['items_this_run']} items in {summary['elapsed_s']:.1f} s"
              + (f" ({summary['items_per_s']:.1f} items/s)" if summary["items_this_run"] else " (all shards were already committed)"),
              "unique = media decoded and encoded once for every row that names them (same URI, same text, or same "
              "bytes held in the input)",
              f"errors (read/decode/encode) are rows in {summary['output'].rstrip('/')}/errors/*.parquet; "
              f"summary: {summary['output'].rstrip('/')}/summary.json"]
    return "\n".join(lines)
