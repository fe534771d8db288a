"""The progressive training job (Ray Train) and the model artifact it writes.

Stage 1 aligns the first pair jointly; each later stage loads the previous stage's weights,
freezes them and trains only the new modality's adapter and token. Every stage is a
``TorchTrainer`` run with a checkpoint per epoch: rerunning resumes a stage from its latest
checkpoint and skips stages already finished.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.checkpoint import read_json, write_json
from pipeline.config import ConfigError
from pipeline.features import FeatureStore
from pipeline.model import ModelConfig
from pipeline.pairs import join, load_features, split
from pipeline.sources import storage_options
from pipeline.train_config import TrainConfig
from pipeline.train_loop import SELECTION_METRIC, SELECTION_ORDER, train_loop

log = logging.getLogger(__name__)
ARTIFACT_FORMAT = "oneencoder-artifact/1"


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train every stage of ``cfg`` on the feature store and write the artifact; return its metrics."""
    if not cfg.features or not cfg.output:
        raise ConfigError("invalid config: features and output are required (--features OUT --output MODEL_DIR)")
    if "://" in cfg.output:
        raise ConfigError(f"output = {cfg.output!r}: expected a local folder for the model artifact")
    output = os.path.abspath(cfg.output)
    features_uri = cfg.features if "://" in cfg.features else os.path.abspath(cfg.features)
    options = storage_options(cfg.storage)
    names = sorted({n for s in cfg.stages for n in (s.new, s.anchor, s.third) if n})
    try:
        features = {n: load_features(features_uri, n, options) for n in names}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    os.makedirs(os.path.join(output, "stages"), exist_ok=True)
    m = cfg.model
    model_config = ModelConfig(d=m.d, layers=m.layers, heads=m.heads, ff=m.ff, dropout=m.dropout)
    weights: bytes | None = None
    stage_metrics = []
    for index, stage in enumerate(cfg.stages):
        weights, record = _run_stage(cfg, index, model_config, weights, features, output)
        stage_metrics.append(record)
    _write_artifact(cfg, output, features_uri, options, model_config, weights, stage_metrics)
    return {"output": output, "stages": stage_metrics}


def _run_stage(cfg: TrainConfig, index: int, model_config: ModelConfig, weights: bytes | None,
               features: dict, output: str) -> tuple[bytes, dict[str, Any]]:
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file, save, save_file

    stage = cfg.stages[index]
    label = f"{index + 1}-{stage.new}-{stage.anchor}"
    folder = os.path.join(output, "stages", label)
    names = [n for n in (stage.new, stage.anchor, stage.third) if n]
    ids, arrays = join(features, names)
    (train_ids, train), (val_ids, val) = split(ids, arrays, cfg.val_fraction, cfg.seed)
    shapes = {n: tuple(arrays[n].shape[1:]) for n in names}
    new_modalities = {n: shapes[n] for n in ([stage.new] if index else [stage.new, stage.anchor])}
    fingerprint = {"stage": stage.model_dump(mode="json"), "seed": cfg.seed, "pairs": len(ids),
                   "model": dataclasses.asdict(model_config), "val_ids": len(val_ids)}
    done = os.path.join(folder, "stage.json")
    if os.path.exists(done) and read_json(done)["fingerprint"] == fingerprint:
        log.info("stage %s already trained: %s", label, folder)
        _grow(model_config, new_modalities)
        record = read_json(done)["record"]
        return save(load_file(os.path.join(folder, "model.safetensors"))), record
    workers = cfg.workers
    batch = min(stage.batch_size, len(train_ids) // workers)
    if batch < 2:
        raise ConfigError(f"stage {label}: {len(train_ids)} training pairs for {workers} worker(s): expected at least 2 per worker")
    log.info("stage %s: %d pairs (%d train, %d val), batch %d x %d worker(s), %d epochs",
             label, len(ids), len(train_ids), len(val_ids), batch, workers, stage.epochs)
    to_ds = lambda part: _quiet(ray.data.from_arrow(pa.table({n: _tensor(part[n]) for n in names})))  # noqa: E731
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"stage": stage.model_dump(mode="json"), "stage_index": index, "seed": cfg.seed,
                           "model_config": dataclasses.asdict(model_config), "init_weights": weights,
                           "new_modalities": new_modalities, "batch_size": batch,
                           "threads": max(1, int(cfg.cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=f"stage-{label}", storage_path=os.path.join(output, "_ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                                checkpoint_score_attribute=SELECTION_METRIC,
                                                                checkpoint_score_order=SELECTION_ORDER),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": to_ds(train), "val": to_ds(val)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    started = time.time()
    result = trainer.fit()
    best = result.get_best_checkpoint(SELECTION_METRIC, SELECTION_ORDER) or result.checkpoint
    with best.as_directory() as ckpt:
        pair = load_file(os.path.join(ckpt, "pair.safetensors"))
        state = read_json(os.path.join(ckpt, "state.json"))
    model_state = {k[len("model."):]: v for k, v in pair.items() if k.startswith("model.")}
    os.makedirs(folder, exist_ok=True)
    save_file(model_state, os.path.join(folder, "model.safetensors"))
    history = _full_history(result, state)
    record = {"stage": label, "new": stage.new, "anchor": stage.anchor, "epochs_run": len(history),
              "best_epoch": state["epoch"] + 1, "best": state["history"][-1], "history": history,
              "train_pairs": len(train_ids), "val_pairs": len(val_ids), "seconds": round(time.time() - started, 1)}
    write_json(done, {"fingerprint": fingerprint, "record": record})
    _grow(model_config, new_modalities)
    return save(model_state), record


def _full_history(result, best_state: dict) -> list[dict[str, float]]:
    """Per-epoch metrics of the stage (from the latest checkpoint, which holds the whole history)."""
    latest = result.checkpoint
    if latest is None:
        return best_state["history"]
    with latest.as_directory() as ckpt:
        return read_json(os.path.join(ckpt, "state.json"))["history"]


def _grow(model_config: ModelConfig, new_modalities: dict[str, tuple[int, int]]) -> None:
    for name, (k, dim) in new_modalities.items():
        model_config.in_dims[name] = dim
        model_config.tokens[name] = k


def _quiet(ds):
    """No per-dataset progress bars from inside the training workers (epoch lines say enough)."""
    ds.context.enable_progress_bars = False
    return ds


def _tensor(array: np.ndarray):
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _write_artifact(cfg: TrainConfig, output: str, features_uri: str, options: dict, model_config: ModelConfig,
                    weights: bytes, stages: list[dict[str, Any]]) -> None:
    import ray
    import torch
    from safetensors.torch import load, save_file

    save_file(load(weights), os.path.join(output, "model.safetensors"))
    store = FeatureStore(features_uri, options)
    encoders = {}
    for name in model_config.in_dims:
        record = store.read_json(f"_progress/{name}/encoder.json")
        if record is None:
            raise ConfigError(f"feature store {features_uri} has no encoder record for {name!r} (re-run the embed job)")
        encoders[name] = record
    write_json(os.path.join(output, "config.json"), {"format": ARTIFACT_FORMAT, "model": dataclasses.asdict(model_config)})
    write_json(os.path.join(output, "encoders.json"), encoders)
    write_json(os.path.join(output, "metrics.json"), {"stages": stages})
    write_json(os.path.join(output, "provenance.json"), {
        "features": features_uri, "config": cfg.model_dump(mode="json"), "seed": cfg.seed,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"ray": ray.__version__, "torch": torch.__version__}})
    log.info("model artifact written to %s", output)
