"""The per-worker training loop of one curriculum stage (runs inside Ray Train workers)."""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import torch
from torch import nn

from pipeline.checkpoint import load_optimizer, load_weights, read_json, save_optimizer, save_weights, write_json
from pipeline.curriculum import apply_freeze, set_modes, trainable_parts
from pipeline.losses import ContrastiveLoss, LossConfig, info_nce
from pipeline.metrics import both_directions
from pipeline.model import ModelConfig, OneEncoder, count_trainable
from pipeline.train_config import StageConfig

log = logging.getLogger("pipeline.train")
# The best epoch and early stopping follow the validation InfoNCE loss: on small validation sets with
# near-duplicate pairs it ranks epochs far more steadily than recall@1, which moves in 1/N steps.
SELECTION_METRIC, SELECTION_ORDER = "val/loss", "min"
VAL_LOSS_CHUNK = 512  # pairs per validation-loss block (bounds the similarity matrix on large validation sets)


class StagePair(nn.Module):
    """Model + loss as one module, so DDP sees a single forward per step."""

    def __init__(self, model: OneEncoder, loss: ContrastiveLoss, stage: StageConfig):
        super().__init__()
        self.model, self.loss, self.stage = model, loss, stage

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.stage
        a, b = self.model(s.new, batch[s.new]), self.model(s.anchor, batch[s.anchor])
        c = self.model(s.third, batch[s.third]) if s.third else None
        return self.loss(a, b, c)


def build_stage_model(config: dict[str, Any]) -> tuple[OneEncoder, StageConfig, list]:
    """The model as it enters the stage (previous weights, new modality added) with its freeze applied."""
    from safetensors.torch import load as load_bytes

    stage, index = StageConfig(**config["stage"]), config["stage_index"]
    torch.manual_seed(config["seed"] + index)
    model = OneEncoder(ModelConfig(**config["model_config"]))
    if config["init_weights"]:
        model.load_state_dict(load_bytes(config["init_weights"]))
    for name, (k, dim) in config["new_modalities"].items():
        model.add_modality(name, dim, k)
    parts = trainable_parts(model, index, stage.new, stage.anchor)
    apply_freeze(model, parts)
    return model, stage, parts


def train_loop(config: dict[str, Any]) -> None:
    """Train one stage; report per-epoch metrics and a checkpoint; resume from the latest checkpoint."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    from pipeline.runtime import setup_logging

    setup_logging()
    # one line per epoch is ours: not Ray's per-report and per-checkpoint lines (model wrapping etc. stay)
    for name in ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(config["threads"])
    model, stage, parts = build_stage_model(config)
    pair = StagePair(model, ContrastiveLoss(LossConfig(**stage.loss.model_dump())), stage)
    params = [p for p in pair.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=stage.learning_rate(config["stage_index"]), weight_decay=stage.weight_decay)
    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            load_weights(pair, os.path.join(folder, "pair.safetensors"))
            load_optimizer(opt, folder)
            state = read_json(os.path.join(folder, "state.json"))
        start, history = state["epoch"] + 1, state["history"]
        log.info("stage %s:%s resumes after epoch %d", stage.new, stage.anchor, state["epoch"] + 1)
    elif rank == 0:
        log.info("stage %s:%s: %d trainable parameters (model) + 1 (temperature), lr %g", stage.new, stage.anchor,
                 count_trainable(model), stage.learning_rate(config["stage_index"]))
    ddp = prepare_model(pair, parallel_strategy="ddp") if ray.train.get_context().get_world_size() > 1 else pair
    names = [n for n in (stage.new, stage.anchor, stage.third) if n]
    val = _materialize(ray.train.get_dataset_shard("val"), names)
    train = ray.train.get_dataset_shard("train")
    for epoch in range(start, stage.epochs):
        pair.train()
        set_modes(model, parts)
        losses = []
        for batch in train.iter_torch_batches(batch_size=config["batch_size"], dtypes=torch.float32, drop_last=True,
                                              local_shuffle_buffer_size=16 * config["batch_size"],  # near-uniform shuffle of small stores
                                              local_shuffle_seed=config["seed"] + epoch):
            terms = ddp({n: batch[n] for n in names})
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            losses.append(float(terms["loss"].detach()))
        metrics = _validate(pair, stage, val)
        metrics.update({"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1),
                        "temperature": float(pair.loss.temperature.detach()),
                        "resumed_after_epoch": start})  # 0 for a fresh run; > 0 after a restart from a checkpoint
        history.append(metrics)
        if rank == 0:
            log.info("stage %s:%s epoch %d/%d loss %.4f val loss %.4f temperature %.4f val recall@1 %.3f",
                     stage.new, stage.anchor, epoch + 1, stage.epochs, metrics["loss"], metrics["val/loss"],
                     metrics["temperature"], metrics["val/recall@1"])
        _report(pair, opt, epoch, history, metrics, rank, Checkpoint)
        if stage.patience and _epochs_since_best(history) >= stage.patience:
            if rank == 0:
                log.info("stage %s:%s: early stop, no better %s for %d epochs", stage.new, stage.anchor,
                         SELECTION_METRIC, stage.patience)
            break


def _materialize(shard, names: list[str]) -> dict[str, torch.Tensor]:
    parts = {n: [] for n in names}
    for batch in shard.iter_torch_batches(batch_size=1024, dtypes=torch.float32):
        for n in names:
            parts[n].append(batch[n])
    return {n: torch.cat(v) for n, v in parts.items()}


@torch.no_grad()
def _validate(pair: StagePair, stage: StageConfig, val: dict[str, torch.Tensor]) -> dict[str, float]:
    pair.eval()
    a, b = pair.model(stage.new, val[stage.new]), pair.model(stage.anchor, val[stage.anchor])
    blocks = [(start, min(start + VAL_LOSS_CHUNK, len(a))) for start in range(0, len(a), VAL_LOSS_CHUNK)]
    blocks = [blk for blk in blocks if blk[1] - blk[0] > 1] or blocks  # a 1-pair tail has no negatives
    loss = sum(float(info_nce(a[i:j], b[i:j], pair.loss.temperature)) * (j - i) for i, j in blocks) / sum(j - i for i, j in blocks)
    metrics = {f"val/{k}": v for k, v in both_directions(a.numpy(), b.numpy(), stage.new, stage.anchor).items()}
    metrics["val/recall@1"] = (metrics[f"val/{stage.new}->{stage.anchor}/recall@1"]
                               + metrics[f"val/{stage.anchor}->{stage.new}/recall@1"]) / 2
    metrics["val/loss"] = loss
    return metrics


def _report(pair, opt, epoch, history, metrics, rank, checkpoint_cls) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            save_weights(pair, os.path.join(folder, "pair.safetensors"))
            save_optimizer(opt, folder)
            write_json(os.path.join(folder, "state.json"), {"epoch": epoch, "history": history})
            ray.train.report(metrics, checkpoint=checkpoint_cls.from_directory(folder))
        else:
            ray.train.report(metrics)


def _epochs_since_best(history: list[dict[str, float]]) -> int:
    sign = -1 if SELECTION_ORDER == "min" else 1
    scores = [sign * h[SELECTION_METRIC] for h in history]
    return len(scores) - 1 - max(range(len(scores)), key=lambda i: (scores[i], -i))
