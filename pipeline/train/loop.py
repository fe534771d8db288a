"""The per-worker training loop of a curriculum run (inside Ray Train workers): its stages one after another."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

import torch
from torch import nn

from pipeline.eval.metrics import both_directions
from pipeline.metrics import job_metrics
from pipeline.model import ModelConfig, OneEncoder, count_trainable, rows_per_chunk
from pipeline.store.files import read_json, write_json
from pipeline.train.checkpoint import load_optimizer, load_weights, save_optimizer, save_weights
from pipeline.train.config import StageConfig
from pipeline.train.curriculum import apply_freeze, set_modes, trainable_parts
from pipeline.train.losses import ContrastiveLoss, info_nce

log = logging.getLogger("pipeline.train.job")
# The best epoch and early stopping follow the validation InfoNCE loss: on small validation sets with
# near-duplicate pairs it ranks epochs far more steadily than recall@1, which moves in 1/N steps.
SELECTION_METRIC, SELECTION_ORDER = "val/loss", "min"
VAL_LOSS_CHUNK = 512  # pairs per validation-loss block (bounds the similarity matrix on large validation sets)


class StagePair(nn.Module):
    """Model + loss as one module, so DDP sees a single forward per step."""

    def __init__(self, model: OneEncoder, loss: ContrastiveLoss, stage: StageConfig):
        super().__init__()
        self.model, self.loss, self.stage = model, loss, stage
        self.bank: torch.Tensor | None = None  # frozen anchor vectors as extra negatives (negatives: bank)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.stage
        if s.feature_dropout and self.training:  # only inputs of trained adapters (a frozen side stays as served)
            trained = {s.new, s.anchor} if self.model.adapters[s.anchor].training else {s.new}
            batch = {n: nn.functional.dropout(x, s.feature_dropout) if n in trained else x for n, x in batch.items()}
        a, b = self.model(s.new, batch[s.new]), self.model(s.anchor, batch[s.anchor])
        c = self.model(s.third, batch[s.third]) if s.third else None
        terms = self.loss(a, b, c, bank=self.bank)
        for name in s.extra_anchors:  # the new modality aligned to each further (frozen) aligned modality too
            terms[f"infonce/{name}"] = self.loss.nested(lambda x, y, _: info_nce(x, y, self.loss.temperature), a,
                                                        self.model(name, batch[name]))
            terms["loss"] = terms["loss"] + self.loss.config.infonce * terms[f"infonce/{name}"]
        return terms


def build_stage_model(config: dict[str, Any]) -> tuple[OneEncoder, StageConfig, list]:
    """The model as it enters the stage (previous weights, new modality added) with its freeze applied."""
    from safetensors.torch import load as load_bytes

    stage, index = StageConfig(**config["stage"]), config["stage_index"]
    torch.manual_seed(config["seed"] + index)
    model = OneEncoder(ModelConfig(**config["model_config"]))
    if config["init_weights"]:
        model.load_weights(load_bytes(config["init_weights"]))
    for name, (k, dim) in config["new_modalities"].items():
        model.add_modality(name, dim, k)
    parts = trainable_parts(model, index, stage.new, stage.anchor)
    apply_freeze(model, parts)
    return model, stage, parts


def train_loop(config: dict[str, Any]) -> None:
    """Train the run's stages in order, each from the previous stage's best weights.

    ``config["stages"]`` holds one plan per stage (``build_stage_model``'s keys plus ``batch_size`` and
    ``key``, the suffix of its ``train-``/``val-`` datasets). Every epoch reports its metrics and a
    checkpoint (see ``RunState``); a restarted worker group resumes from the latest one, mid-stage.
    """
    import ray.train
    from safetensors.torch import save

    from pipeline.runtime import setup_logging

    setup_logging()
    _quiet_ray_train_reports()
    torch.set_num_threads(config["threads"])
    run = RunState.restore(ray.train.get_checkpoint())
    entry = config["init_weights"]
    for position, plan in enumerate(config["stages"]):  # the run's stages (finished ones before it are skipped)
        if position < len(run.finished):
            entry = run.finished_weights[position]
            continue
        started = time.time()
        best = _train_stage({**plan, "init_weights": entry, "checkpoint_every_steps": config["checkpoint_every_steps"]}, run)
        entry = save(best)
        run.finish_stage(entry, round(time.time() - started, 1))
    # a last checkpoint that holds every stage's result (the epoch checkpoints lack the last stage's)
    run.report({"stages_finished": len(run.finished)}, ray.train.get_context().get_world_rank())


def _quiet_ray_train_reports() -> None:
    """One line per epoch is ours: not Ray's per-report and per-checkpoint lines (model wrapping etc. stay)."""
    from ray.train.v2._internal.execution import context, storage

    # context.py names its logger by file path, storage.py by module name
    for name in (context.__file__, storage.__name__):
        logging.getLogger(name).setLevel(logging.WARNING)


class StageTraining:
    """One stage's model, loss, optimizer and schedule, and its epoch and validation steps: shared by the Ray
    Train loop (``_train_stage``) and the in-process trials of ``oneencoder tune`` (``fit_stage``)."""

    def __init__(self, plan: dict[str, Any]):
        self.plan = plan
        self.model, self.stage, self.parts = build_stage_model(plan)
        self.pair = StagePair(self.model, ContrastiveLoss(self.stage.loss), self.stage)
        self.lr = self.stage.learning_rate(plan["stage_index"])
        self.opt = torch.optim.AdamW([p for p in self.pair.parameters() if p.requires_grad], lr=self.lr,
                                     weight_decay=self.stage.weight_decay)
        self.names = self.stage.modalities
        self.per_epoch = max(1, plan["steps_per_epoch"])
        self.total_steps = self.per_epoch * self.stage.epochs
        self.uses_bank = self.stage.negatives in ("auto", "bank") and plan["stage_index"] > 0

    @torch.no_grad()
    def set_bank(self, anchors: torch.Tensor) -> None:
        """The frozen anchor side's vectors of ``anchors`` (raw features (M, K, D)) as extra negatives."""
        self.model.eval()  # the anchor side is frozen: no dropout, the same vectors every step
        self.pair.bank = _project(self.model, self.stage.anchor, anchors)

    def train_epoch(self, epoch: int, batches, step_module: nn.Module | None = None) -> float:
        """One epoch over ``batches`` (dicts of (B, K, D) tensors); returns the mean training loss."""
        step_module = step_module or self.pair
        self.pair.train()
        set_modes(self.model, self.parts)
        losses, seen = [], 0
        for i, batch in enumerate(batches):
            for group in self.opt.param_groups:  # from the step number alone: a resumed stage continues the schedule
                group["lr"] = self.lr * self.stage.lr_factor(epoch * self.per_epoch + min(i, self.per_epoch - 1),
                                                             self.total_steps)
            terms = step_module({n: batch[n] for n in self.names})
            self.opt.zero_grad()
            terms["loss"].backward()
            self.opt.step()
            losses.append(float(terms["loss"].detach()))
            seen += len(batch[self.names[0]])
        job_metrics().inc("oneencoder_job_rows", seen, job="train", modality=":".join(self.names))
        return sum(losses) / max(len(losses), 1)

    def epoch_metrics(self, epoch: int, loss: float, val: dict[str, torch.Tensor], start: int) -> dict[str, float]:
        metrics = _validate(self.pair, self.stage, val)
        metrics.update({"stage": self.plan["stage_index"] + 1, "epoch": epoch + 1, "loss": loss,
                        "temperature": float(self.pair.loss.temperature.detach()), "lr": self.opt.param_groups[0]["lr"],
                        "resumed_after_epoch": start})  # 0 for a fresh stage; > 0 after a restart from a checkpoint
        return metrics


def _bank_rows(batches, anchor: str, size: int) -> torch.Tensor:
    """Up to ``size`` rows of the anchor column of ``batches``."""
    rows, count = [], 0
    for batch in batches:
        rows.append(batch[anchor][:size - count])
        count += len(rows[-1])
        if count >= size:
            break
    return torch.cat(rows)


def shuffled_batches(rows: dict[str, torch.Tensor], batch: int, seed: int):
    """In-memory rows in a seeded random order, as full batches (the last partial batch dropped)."""
    n = len(next(iter(rows.values())))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ({k: v[order[i:i + batch]] for k, v in rows.items()} for i in range(0, n - batch + 1, batch))


def bank_sample(rows: dict[str, torch.Tensor], anchor: str, size: int, seed: int) -> torch.Tensor:
    """Up to ``size`` anchor rows, drawn in a seeded random order."""
    n = len(rows[anchor])
    return rows[anchor][torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]]


def fit_stage(plan: dict[str, Any], train: dict[str, torch.Tensor], val: dict[str, torch.Tensor],
              on_epoch=None) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train one stage in this process on in-memory features (a Tune trial): the same model, loss, schedule,
    batches, validation and early stopping as the Ray Train loop with ``in_memory``. ``on_epoch(metrics)`` is
    called after each epoch. Returns the best epoch's model state and the history."""
    st = StageTraining(plan)
    if st.uses_bank:
        st.set_bank(bank_sample(train, st.stage.anchor, st.stage.bank_size, plan["seed"]))
    run = RunState()  # history and best weights, as the Ray Train loop keeps them (never checkpointed here)
    for epoch in range(st.stage.epochs):
        batches = shuffled_batches(train, plan["batch_size"], plan["seed"] + epoch)
        metrics = st.epoch_metrics(epoch, st.train_epoch(epoch, batches), val, 0)
        run.end_epoch(epoch, metrics, st.model)
        if on_epoch:
            on_epoch(metrics)
        if _patience_spent(st.stage, run.history):
            break
    return run.best_state, run.history


def _train_stage(plan: dict[str, Any], run: "RunState") -> dict[str, torch.Tensor]:
    """Run (or resume) one stage's epochs; return the model state of its best epoch."""
    import ray.train
    from ray.train.torch import prepare_model

    context = ray.train.get_context()
    rank = context.get_world_rank()
    st = StageTraining(plan)
    stage, model = st.stage, st.model
    if run.resume_into(st.pair, st.opt):
        log.info("stage %s:%s resumes after epoch %d", stage.new, stage.anchor, run.epoch + 1)
    elif rank == 0:
        log.info("stage %s:%s: %d trainable parameters (model) + 1 (temperature), lr %g", stage.new, stage.anchor,
                 count_trainable(model), st.lr)
    ddp = prepare_model(st.pair, parallel_strategy="ddp") if context.get_world_size() > 1 else st.pair
    val = _materialize(ray.train.get_dataset_shard(f"val-{plan['key']}"), st.names)
    train = ray.train.get_dataset_shard(f"train-{plan['key']}")
    # a small shard is read once and shuffled in memory each epoch: a pass through Ray Data costs more than
    # an epoch of a few steps; a large one streams through Ray Data every epoch
    rows = _materialize(train, st.names) if plan["in_memory"] else None

    def batches(seed: int, drop_last: bool = True):
        if rows is not None:
            return shuffled_batches(rows, plan["batch_size"], seed)
        return train.iter_torch_batches(batch_size=plan["batch_size"], dtypes=torch.float32, drop_last=drop_last,
                                        local_shuffle_buffer_size=16 * plan["batch_size"],  # near-uniform shuffle of small stores
                                        local_shuffle_seed=seed)

    if st.uses_bank:  # bank_size of this worker's training anchors, in a seeded shuffle
        st.set_bank(bank_sample(rows, stage.anchor, stage.bank_size, plan["seed"]) if rows is not None else
                    _bank_rows(batches(plan["seed"], drop_last=False), stage.anchor, stage.bank_size))
    start = run.epoch + 1
    # checkpoint every `every` epochs (the same on every rank: DDP ranks report together), and at the end
    every = max(1, -(-plan["checkpoint_every_steps"] // st.per_epoch))
    for epoch in range(start, stage.epochs):
        if _patience_spent(stage, run.history):
            break  # resumed after the epoch that stopped the stage early
        metrics = st.epoch_metrics(epoch, st.train_epoch(epoch, batches(plan["seed"] + epoch), ddp), val, start)
        run.end_epoch(epoch, metrics, model)
        stop = _patience_spent(stage, run.history)
        if stop or (epoch + 1) % every == 0 or epoch + 1 == stage.epochs:  # a log line and a checkpoint
            if rank == 0:
                log.info("stage %s:%s epoch %d/%d loss %.4f val loss %.4f (best %.4f, epoch %d) lr %.2g "
                         "temperature %.4f val recall@1 %.3f", stage.new, stage.anchor, epoch + 1, stage.epochs,
                         metrics["loss"], metrics["val/loss"], run.history[run.best_epoch]["val/loss"],
                         run.best_epoch + 1, st.opt.param_groups[0]["lr"], metrics["temperature"], metrics["val/recall@1"])
            run.report(metrics, rank, st.pair, st.opt)
        if stop:
            if rank == 0:
                log.info("stage %s:%s: early stop, no better %s for %d epochs", stage.new, stage.anchor,
                         SELECTION_METRIC, stage.patience)
            break
    return run.best_state


class RunState:
    """Where a multi-stage run is, as saved in every checkpoint and restored after a restart.

    Checkpoint folder: ``state.json`` (stage position, epoch, this stage's history and best epoch, the
    records of finished stages), ``pair.safetensors`` + ``optimizer.*`` (this stage's current weights and
    optimizer), ``best.safetensors`` (this stage's best model weights so far) and
    ``finished-<i>.safetensors`` (each finished stage's best model weights).
    """

    def __init__(self) -> None:
        self.epoch, self.history, self.best_epoch = -1, [], -1
        self.best_state: dict[str, torch.Tensor] = {}
        self.finished: list[dict[str, Any]] = []      # per finished stage: best_epoch, history, seconds
        self.finished_weights: list[bytes] = []      # per finished stage: its best model weights (safetensors)
        self._folder: str | None = None               # the restored checkpoint, read by resume_into

    @classmethod
    def restore(cls, checkpoint) -> "RunState":
        from safetensors.torch import load_file

        run = cls()
        if checkpoint is None:
            return run
        run._folder = checkpoint.to_directory(tempfile.mkdtemp(prefix="oneencoder-resume-"))  # own copy per worker
        state = read_json(os.path.join(run._folder, "state.json"))
        run.epoch, run.history, run.best_epoch, run.finished = state["epoch"], state["history"], state["best_epoch"], state["finished"]
        for i in range(len(run.finished)):
            with open(os.path.join(run._folder, f"finished-{i}.safetensors"), "rb") as fh:
                run.finished_weights.append(fh.read())
        if run.epoch >= 0:
            run.best_state = load_file(os.path.join(run._folder, "best.safetensors"))
        else:  # saved between stages: nothing left for resume_into
            shutil.rmtree(run._folder, ignore_errors=True)
            run._folder = None
        return run

    def resume_into(self, pair: StagePair, opt: torch.optim.Optimizer) -> bool:
        """Load the checkpoint's weights and optimizer into the current stage, if it stopped mid-stage."""
        if self._folder is None or self.epoch < 0:
            return False
        load_weights(pair, os.path.join(self._folder, "pair.safetensors"))
        load_optimizer(opt, self._folder)
        shutil.rmtree(self._folder, ignore_errors=True)  # a local copy made by restore()
        self._folder = None
        return True

    def end_epoch(self, epoch: int, metrics: dict[str, float], model: OneEncoder) -> None:
        self.epoch = epoch
        self.history.append(metrics)
        if _epochs_since_best(self.history) == 0:
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finish_stage(self, weights: bytes, seconds: float) -> None:
        self.finished.append({"best_epoch": self.best_epoch, "history": self.history, "seconds": seconds})
        self.finished_weights.append(weights)
        self.epoch, self.history, self.best_epoch, self.best_state, self._folder = -1, [], -1, {}, None

    def report(self, metrics: dict[str, float], rank: int, pair: StagePair | None = None,
               opt: torch.optim.Optimizer | None = None) -> None:
        """Report metrics from every rank; rank 0 attaches the checkpoint (DDP ranks hold the same weights).

        Without ``pair`` (between or after stages) the checkpoint holds only the finished stages.
        """
        import ray.train
        from ray.train import Checkpoint
        from safetensors.torch import save_file

        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            if pair is not None:
                save_weights(pair, os.path.join(folder, "pair.safetensors"))
                save_optimizer(opt, folder)
                save_file(self.best_state, os.path.join(folder, "best.safetensors"))
            for i, weights in enumerate(self.finished_weights):
                with open(os.path.join(folder, f"finished-{i}.safetensors"), "wb") as fh:
                    fh.write(weights)
            write_json(os.path.join(folder, "state.json"), {"epoch": self.epoch, "history": self.history,
                                                            "best_epoch": self.best_epoch, "finished": self.finished})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _materialize(shard, names: list[str]) -> dict[str, torch.Tensor]:
    parts = {n: [] for n in names}
    for batch in shard.iter_torch_batches(batch_size=1024, dtypes=torch.float32):
        for n in names:
            parts[n].append(batch[n])
    return {n: torch.cat(v) for n, v in parts.items()}


def _project(model: OneEncoder, modality: str, features: torch.Tensor) -> torch.Tensor:
    """(N, K, D) features → (N, d) vectors, a chunk at a time (``rows_per_chunk``: long sequences in small chunks)."""
    step = rows_per_chunk(features.shape[1])
    return torch.cat([model(modality, features[i:i + step]) for i in range(0, len(features), step)])


@torch.no_grad()
def _validate(pair: StagePair, stage: StageConfig, val: dict[str, torch.Tensor]) -> dict[str, float]:
    pair.eval()
    a, b = _project(pair.model, stage.new, val[stage.new]), _project(pair.model, stage.anchor, val[stage.anchor])
    blocks = [(start, min(start + VAL_LOSS_CHUNK, len(a))) for start in range(0, len(a), VAL_LOSS_CHUNK)]
    blocks = [blk for blk in blocks if blk[1] - blk[0] > 1] or blocks  # a 1-pair tail has no negatives
    loss = sum(float(info_nce(a[i:j], b[i:j], pair.loss.temperature)) * (j - i) for i, j in blocks) / sum(j - i for i, j in blocks)
    metrics = {f"val/{k}": v for k, v in both_directions(a.numpy(), b.numpy(), stage.new, stage.anchor).items()}
    metrics["val/recall@1"] = (metrics[f"val/{stage.new}->{stage.anchor}/recall@1"]
                               + metrics[f"val/{stage.anchor}->{stage.new}/recall@1"]) / 2
    metrics["val/loss"] = loss
    return metrics


def _patience_spent(stage: StageConfig, history: list[dict[str, float]]) -> bool:
    """Early stopping: ``stage.patience`` epochs (0 = off) have passed without a better validation loss."""
    return bool(stage.patience) and bool(history) and _epochs_since_best(history) >= stage.patience


def _epochs_since_best(history: list[dict[str, float]]) -> int:
    sign = -1 if SELECTION_ORDER == "min" else 1
    scores = [sign * h[SELECTION_METRIC] for h in history]
    return len(scores) - 1 - max(range(len(scores)), key=lambda i: (scores[i], -i))
