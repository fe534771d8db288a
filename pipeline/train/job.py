"""The progressive training job (Ray Train) and the model artifact it writes.

Stage 1 aligns the first pair jointly; each later stage starts from the previous stage's best
weights, freezes them and trains only the new modality's adapter and token. The stages run in one
``TorchTrainer`` run with a checkpoint per epoch: a restarted worker group or a rerun resumes from the
latest checkpoint, mid-stage, and a rerun skips stages already saved with the same settings.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.artifact import Artifact, ArtifactError, EncoderRecord, read_artifact, write_artifact
from pipeline.config import ConfigError
from pipeline.model import ModelConfig
from pipeline.store.features import FeatureStore
from pipeline.store.files import read_json, write_bytes_atomic, write_json
from pipeline.store.pairs import join, load_features, split
from pipeline.store.sources import storage_options
from pipeline.train.config import StageConfig, TrainConfig, check_curriculum
from pipeline.train.loop import train_loop
from pipeline.train.tune import SEARCHED, search_stage, tuned_stage

log = logging.getLogger(__name__)
RUN_FORMAT = "oneencoder-run/2"  # checkpoint layout of a training run (pipeline/train/loop.RunState)


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train every stage of ``cfg`` on the feature store and write the artifact; return its metrics.

    Stages already trained with the same settings (a leading run of them) are loaded, not retrained;
    the rest run as one TorchTrainer run, stage after stage (one start-up for the whole curriculum).
    """
    if not cfg.features or not cfg.output:
        raise ConfigError("invalid config: features and output are required (--features OUT --output MODEL_DIR)")
    if "://" in cfg.output:
        raise ConfigError(f"output = {cfg.output!r}: expected a local folder for the model artifact")
    output = os.path.abspath(cfg.output)
    features_uri = _features_uri(cfg)
    options = storage_options(cfg.storage)
    base = _base_model(cfg, FeatureStore(features_uri, options), output) if cfg.from_model else None
    names = sorted({n for s in cfg.stages for n in s.modalities})
    try:
        features = {n: load_features(features_uri, n, options) for n in names}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # the records the artifact will keep, read and checked before any training rather than after the last stage
    kept = base.encoders if base else {}
    encoders = {**kept, **_store_encoders(FeatureStore(features_uri, options), [n for n in names if n not in kept])}
    os.makedirs(os.path.join(output, "stages"), exist_ok=True)
    search = None
    if cfg.tune:
        cfg, search = _tune_curriculum(cfg, features, output, base)
    weights, records, model_config = train_curriculum(cfg, features, output, base)
    _write_artifact(cfg, output, features_uri, model_config, weights, records, encoders, search, base)
    return {"output": output, "stages": records, **({"tune": search} if search else {})}


def _tune_curriculum(cfg: TrainConfig, features: dict, output: str, base=None) -> tuple[TrainConfig, dict[str, Any]]:
    """Search each stage in order, training each with its best settings before the next is searched (stages
    already trained with the same settings are reused). Returns the config with the tuned stages and the
    search record. ``base``: the model artifact being grown (``from_model``), if any."""
    stages, record = list(cfg.stages), {"settings": cfg.tune.model_dump(mode="json"), "stages": []}
    for index in range(len(stages)):
        entry = train_curriculum(cfg.model_copy(update={"stages": stages[:index]}), features, output, base)[0]
        plans, _ = plan_curriculum(cfg.model_copy(update={"stages": stages[:index + 1]}), features, output, base)
        result = search_stage(plans[index], entry, cfg.tune, cfg.seed, output)
        stages[index] = tuned_stage(stages[index], result["best"])
        record["stages"].append(result)
        log.info("stage %s: best of %d trials: %s (val loss %.4f)", plans[index].label, len(result["trials"]),
                 ", ".join(f"{k} {result['best'][k]:.3g}" for k in SEARCHED), result["best_val_loss"])
    return cfg.model_copy(update={"stages": stages}), record


def _store_encoders(store: FeatureStore, names: list[str]) -> dict[str, EncoderRecord]:
    """The encoder record of each of ``names`` in ``store`` (what the artifact keeps to rebuild its encoders);
    ConfigError naming the store, the modality and what is missing."""
    out = {}
    for name in names:
        record = store.encoder_record(name)
        if record is None:
            raise ConfigError(f"feature store {store.root} has no encoder record for {name!r} (re-run the embed job)")
        try:
            out[name] = EncoderRecord.from_json(record, f"feature store {store.root}: {name}")
        except ArtifactError as e:
            raise ConfigError(f"{e} (re-run the embed job)") from None
    return out


def _base_model(cfg: TrainConfig, store: FeatureStore, output: str) -> Artifact:
    """The artifact ``cfg.from_model`` grows, checked against the curriculum and the store: every modality it
    already has must come from the same frozen encoder and K in the store, or its stages would see other inputs."""
    base_path = os.path.abspath(cfg.from_model)
    if base_path == output:
        raise ConfigError(f"from_model = output = {output}: write the grown model to another folder (the model it "
                          "grows stays as it is, so indexes built with it stay valid)")
    try:
        base = read_artifact(base_path)
        check_curriculum(cfg.stages, set(base.modalities))
    except ValueError as e:
        raise ConfigError(f"from_model {cfg.from_model}: {e}") from None
    for name in sorted({n for s in cfg.stages for n in s.modalities} & set(base.modalities)):
        mismatch = base.features_mismatch(store, name)
        if mismatch:
            raise ConfigError(f"features {store.root}: {mismatch} ({cfg.from_model}); embed the {name} column with "
                              f"the model's encoder (see {cfg.from_model}/encoders.json)")
    return base


def train_curriculum(cfg: TrainConfig, features: dict, output: str,
                     base: Artifact | None = None) -> tuple[bytes, list[dict[str, Any]], ModelConfig]:
    """Train ``cfg``'s stages (loading a leading run of stages already trained with the same settings); return
    the last stage's weights, every stage's record and the final model config. With ``base`` (a model being
    grown) the stages start from its weights and continue its numbering."""
    plans, model_config = plan_curriculum(cfg, features, output, base)
    reuse = reusable_stages(plans)
    weights: bytes | None = base.weights() if base else None
    records: list[dict[str, Any]] = []
    for plan in plans[:reuse]:
        log.info("stage %s already trained: %s", plan.label, plan.folder)
        weights, record = plan.load()
        records.append(record)
    if reuse < len(plans):
        weights, trained = _fit(cfg, plans[reuse:], weights, output)
        records += trained
    return weights, records, model_config


def _features_uri(cfg: TrainConfig) -> str:
    return cfg.features if "://" in cfg.features else os.path.abspath(cfg.features)


def plan_curriculum(cfg: TrainConfig, features: dict, output: str,
                    base: Artifact | None = None) -> tuple[list["StagePlan"], ModelConfig]:
    """One plan per stage, and the config of the model after the last stage (grown from ``base``'s, if given:
    its shape, not ``cfg.model``'s, and stage numbers after its stages)."""
    model_config = ModelConfig(**copy.deepcopy(base.model)) if base else cfg.model.model_copy(deep=True)
    origin = {"from": base.path, "from_weights": hashlib.sha256(base.weights()).hexdigest()} if base else {}
    store = FeatureStore(_features_uri(cfg), storage_options(cfg.storage))
    offset = len(base.stages) if base else 0
    plans = []
    for index in range(len(cfg.stages)):
        plans.append(_plan_stage(cfg, index, offset, model_config, features, output, store, origin))
        _grow(model_config, plans[-1].new_modalities)
    return plans, model_config


def reusable_stages(plans: list["StagePlan"]) -> int:
    """How many leading stages are loaded instead of trained: each saved with the same settings, and every
    stage before it too (a later stage was aligned to the earlier ones as they were then)."""
    count = 0
    while count < len(plans) and plans[count].finished():
        count += 1
    return count


@dataclasses.dataclass
class StagePlan:
    """One stage, ready to train: its pairs split by id, the model it starts from, where it is saved."""

    index: int
    label: str                        # e.g. 2-audio-text
    stage: StageConfig
    names: list[str]                  # modalities in each batch
    train: dict[str, np.ndarray]      # modality -> (N, K, D) features of the training ids
    val: dict[str, np.ndarray]
    new_modalities: dict[str, tuple[int, int]]   # modality -> (K, D) added to the model by this stage
    entry_model: dict[str, Any]       # ModelConfig (as a dict) of the model the stage starts from
    batch_size: int
    steps_per_epoch: int              # optimizer steps of one epoch on each worker
    fingerprint: dict[str, Any]       # what the stage's result depends on: a saved stage is reused only if it matches
    folder: str
    in_memory: bool = True            # each worker holds its training shard in memory (see TrainConfig.in_memory_mb)

    def finished(self) -> bool:
        done = os.path.join(self.folder, "stage.json")
        return os.path.exists(done) and read_json(done)["fingerprint"] == self.fingerprint

    def load(self) -> tuple[bytes, dict[str, Any]]:
        with open(os.path.join(self.folder, "model.safetensors"), "rb") as fh:
            return fh.read(), read_json(os.path.join(self.folder, "stage.json"))["record"]

    def worker_config(self, seed: int) -> dict[str, Any]:
        """What the training loop needs of this stage (``init_weights`` is added there)."""
        return {"stage": self.stage.model_dump(mode="json"), "stage_index": self.index, "seed": seed,
                "model_config": self.entry_model, "new_modalities": self.new_modalities, "in_memory": self.in_memory,
                "batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch, "key": str(self.index + 1)}

    def pairs(self, part: str) -> int:
        return len(getattr(self, part)[self.names[0]])


def _plan_stage(cfg: TrainConfig, position: int, offset: int, model_config: ModelConfig, features: dict, output: str,
                store: FeatureStore, origin: dict[str, str]) -> StagePlan:
    stage, index = cfg.stages[position], offset + position  # index: the stage's place in the grown model's curriculum
    label = f"{index + 1}-{stage.new}-{stage.anchor}"
    names = stage.modalities
    ids, arrays = join(features, names)
    (train_ids, train), (val_ids, val) = split(ids, arrays, cfg.val_fraction, cfg.seed)
    shapes = {n: tuple(arrays[n].shape[1:]) for n in names}
    new_modalities = {n: shapes[n] for n in ([stage.new] if index else [stage.new, stage.anchor])}
    entry_model = model_config.model_dump()
    batch = min(stage.batch_size, len(train_ids) // cfg.workers)
    if batch < 2:
        raise ConfigError(f"stage {label}: {len(train_ids)} training pairs for {cfg.workers} worker(s): expected at least 2 per worker")
    steps_per_epoch = (len(train_ids) // cfg.workers) // batch  # each worker drops its last partial batch
    stage = stage.resolved(steps_per_epoch)  # automatic epochs and patience made concrete for this store
    # the store's identity too: the same stage on another store (other encoders, K x D, manifest) is retrained
    fingerprint = {"stage": stage.model_dump(mode="json"), "seed": cfg.seed, "pairs": len(ids),
                   "model": entry_model, "val_ids": len(val_ids), "features": store.root,
                   "store": {n: store.run_record(n) for n in names}, "shapes": {n: list(shapes[n]) for n in names},
                   **origin}
    shard_mb = sum(a[0].size for a in train.values()) * 4 * (len(train_ids) // cfg.workers) / 2**20  # as float32
    return StagePlan(index, label, stage, names, train, val, new_modalities, entry_model, batch, steps_per_epoch,
                     fingerprint, os.path.join(output, "stages", label), shard_mb <= cfg.in_memory_mb)


def _fit(cfg: TrainConfig, todo: list[StagePlan], weights: bytes | None, output: str) -> tuple[bytes, list[dict[str, Any]]]:
    """Train ``todo`` as one TorchTrainer run; save each stage's best weights and record; return the last weights."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    datasets = {}
    for plan in todo:
        log.info("stage %s: %d pairs (%d train, %d val), batch %d x %d worker(s), %d epochs of %d steps, "
                 "early stop after %s epochs without a lower val loss", plan.label,
                 plan.pairs("train") + plan.pairs("val"), plan.pairs("train"), plan.pairs("val"), plan.batch_size,
                 cfg.workers, plan.stage.epochs, plan.steps_per_epoch, plan.stage.patience or "no")
        for part in ("train", "val"):
            table = pa.table({n: _tensor(getattr(plan, part)[n]) for n in plan.names})
            datasets[f"{part}-{plan.index + 1}"] = _quiet(ray.data.from_arrow(table))
    # a rerun with the same stages and settings finds this run's checkpoints and resumes; other settings start afresh
    digest = hashlib.sha1(json.dumps([RUN_FORMAT] + [p.fingerprint for p in todo], sort_keys=True).encode()).hexdigest()[:10]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"stages": [p.worker_config(cfg.seed) for p in todo], "init_weights": weights,
                           "threads": max(1, int(cfg.cpus_per_worker)),
                           "checkpoint_every_steps": cfg.checkpoint_every_steps},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=f"stages-{todo[0].index + 1}-{todo[-1].index + 1}-{digest}",
                             storage_path=os.path.join(output, "_ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[k for k in datasets if k.startswith("train-")]),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as ckpt:
        finished = read_json(os.path.join(ckpt, "state.json"))["finished"]
        blobs = []
        for i in range(len(finished)):
            with open(os.path.join(ckpt, f"finished-{i}.safetensors"), "rb") as fh:
                blobs.append(fh.read())
    if len(finished) != len(todo):
        raise RuntimeError(f"training ended after {len(finished)} of {len(todo)} stages (latest checkpoint: {result.checkpoint})")
    return blobs[-1], [_save_stage(plan, done, blob) for plan, done, blob in zip(todo, finished, blobs)]


IMPROVING = 0.01  # a last-tenth drop in validation loss below this share is noise, not "still improving"


def still_improving(losses: list[float], epochs: int) -> bool:
    """Whether a stage ended while its validation loss (``losses``, one per epoch run) was still falling: it ran
    every epoch (no early stop), its best epoch is among the last tenth of them (the last one for up to 19
    epochs), and that best is more than 1 % below the best before them."""
    run, tail = len(losses), max(1, len(losses) // 10)
    if run != epochs or run < 2:
        return run == epochs == 1
    best = min(range(run), key=lambda i: (losses[i], i))
    return best >= run - tail and losses[best] < (1 - IMPROVING) * min(losses[:run - tail])


def _save_stage(plan: StagePlan, done: dict[str, Any], weights: bytes) -> dict[str, Any]:
    """Write the stage's best weights and its record (with the fingerprint that lets a rerun reuse it)."""
    history, best = done["history"], done["best_epoch"]
    improving = still_improving([h["val/loss"] for h in history], plan.stage.epochs)
    record = {"stage": plan.label, "new": plan.stage.new, "anchor": plan.stage.anchor, "epochs": plan.stage.epochs,
              "epochs_run": len(history),
              "best_epoch": best + 1, "best": history[best], "history": history, "train_pairs": plan.pairs("train"),
              "val_pairs": plan.pairs("val"), "seconds": done["seconds"], "still_improving": improving,
              "matryoshka": list(plan.stage.loss.matryoshka)}
    if improving:
        log.warning("stage %s ended while validation loss was still falling (best epoch %d of %d): more epochs "
                    "would likely give a better model (stages[].epochs or --epochs)", plan.label, best + 1, len(history))
    os.makedirs(plan.folder, exist_ok=True)
    marker = os.path.join(plan.folder, "stage.json")
    if os.path.exists(marker):  # an older marker must never vouch for the weights written next
        os.remove(marker)
    write_bytes_atomic(os.path.join(plan.folder, "model.safetensors"), weights)
    write_json(marker, {"fingerprint": plan.fingerprint, "record": record})  # the commit point
    return record


def _grow(model_config: ModelConfig, new_modalities: dict[str, tuple[int, int]]) -> None:
    for name, (k, dim) in new_modalities.items():
        model_config.in_dims[name] = dim
        model_config.tokens[name] = k


def _quiet(ds):
    """No per-epoch progress bars or execution-plan lines from the training data (epoch lines say enough)."""
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def _tensor(array: np.ndarray):
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _write_artifact(cfg: TrainConfig, output: str, features_uri: str, model_config: ModelConfig, weights: bytes,
                    stages: list[dict[str, Any]], encoders: dict[str, EncoderRecord],
                    search: dict[str, Any] | None = None, base: Artifact | None = None) -> None:
    import ray
    import torch

    provenance = {"features": features_uri, "config": cfg.model_dump(mode="json"), "seed": cfg.seed,
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **({"tune": search} if search else {}), **({"from": base.path} if base else {}),
                  "versions": {"ray": ray.__version__, "torch": torch.__version__}}
    write_artifact(output, model_config.model_dump(), weights, encoders,
                   (base.stages if base else []) + stages, provenance)
    log.info("model artifact written to %s", output)
