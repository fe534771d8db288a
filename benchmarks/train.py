"""Training on cached features against running the frozen encoders in every step, measured in one run.

    python -m benchmarks.train [--samples 64] [--batch-size 16] [--epochs 1] [--preset paper|tiny] [--report FILE]
    python -m benchmarks.train --config benchmarks/configs/train_paper.yaml
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from benchmarks.common import PRESET_HELP, REPORT_HELP, Preset, benchmark, cli, finish
from pipeline.config import StrictModel
from pipeline.embed.config import EmbedConfig
from pipeline.encoders.frozen import FrozenEncoder
from pipeline.encoders.presets import resolve_encoder
from pipeline.modality import Modality
from pipeline.synthetic.draw import CAPTIONS, concept, draw_shape

log = logging.getLogger(__name__)


class BenchmarkTrainConfig(StrictModel):
    samples: int = Field(64, ge=2, description="Generated image-text pairs.")
    batch_size: int = Field(16, ge=2, description="Training batch size.")
    epochs: int = Field(1, ge=1, description="Epochs timed for each approach.")
    preset: Preset = Field("paper", description=PRESET_HELP)
    report: str | None = Field(None, description=REPORT_HELP)

    @model_validator(mode="after")
    def _one_batch(self) -> "BenchmarkTrainConfig":
        if self.samples < self.batch_size:
            raise ValueError(f"samples = {self.samples}: expected at least batch_size ({self.batch_size})")
        return self


def benchmark_train(n: int = 64, batch_size: int = 16, epochs: int = 1, preset: str = "paper") -> dict[str, Any]:
    """Epoch time of stage-1 training on cached features vs running the frozen encoders in every step.

    Same projection model, batch size, samples and optimizer; paper architectures at random init.
    """
    import torch

    from pipeline.model import ModelConfig, OneEncoder
    from pipeline.train.losses import ContrastiveLoss, LossConfig

    cfg = EmbedConfig(preset=preset, random_init=preset == "paper")
    encoders = {m: FrozenEncoder(resolve_encoder(cfg, m), cfg.encoder(m)) for m in (Modality("image"), Modality("text"))}
    rng = np.random.default_rng(0)
    images = [np.asarray(draw_shape(*concept(i), size=224, rng=rng)) for i in range(n)]
    texts = [CAPTIONS[i % len(CAPTIONS)].format(c=concept(i)[0], s=concept(i)[1]) for i in range(n)]
    raw = {Modality("image"): images, Modality("text"): texts}

    start = time.perf_counter()
    cached = {m: torch.from_numpy(np.concatenate([encoders[m].embed(raw[m][i:i + batch_size]) for i in range(0, n, batch_size)]))
              for m in raw}
    embed_once = time.perf_counter() - start

    def epoch_time(features_of) -> float:
        torch.manual_seed(0)
        dims = {m.value: int(cached[m].shape[-1]) for m in cached}
        model = OneEncoder(ModelConfig(in_dims=dims, tokens={m: 1 for m in dims}))
        loss = ContrastiveLoss(LossConfig())
        opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-3)
        start = time.perf_counter()
        for _ in range(epochs):
            for i in range(0, n, batch_size):
                a = model("image", features_of(Modality("image"), i))
                b = model("text", features_of(Modality("text"), i))
                terms = loss(a, b)
                opt.zero_grad()
                terms["loss"].backward()
                opt.step()
        return (time.perf_counter() - start) / epochs

    log.info("training on cached features")
    on_cache = epoch_time(lambda m, i: cached[m][i:i + batch_size])
    log.info("training with the frozen encoders inside every step")
    in_loop = epoch_time(lambda m, i: torch.from_numpy(encoders[m].embed(raw[m][i:i + batch_size])))
    return {"samples": n, "batch_size": batch_size, "epochs": epochs, "embed_once_s": embed_once,
            "encoders": f"{encoders['image'].model.config.model_type} + {encoders['text'].model.config.model_type}",
            "epoch_cached_s": on_cache, "epoch_encoders_in_loop_s": in_loop, "speedup": in_loop / on_cache}


def format_train_benchmark(r: dict[str, Any]) -> str:
    return "\n".join([
        f"train benchmark: {r['samples']} image-text pairs, batch {r['batch_size']}, encoders {r['encoders']}, "
        f"stage-1 projection model",
        f"epoch on cached features:              {r['epoch_cached_s']:.3f} s",
        f"epoch with encoders in every step:     {r['epoch_encoders_in_loop_s']:.3f} s",
        f"one-time embedding of the same pairs:  {r['embed_once_s']:.3f} s",
        f"speed-up per epoch: {r['speedup']:.0f}x",
    ])


JOB = benchmark("train", "training on cached features against running the encoders in every step",
                "benchmarks.train:BenchmarkTrainConfig")


def run(cfg: BenchmarkTrainConfig, args: object = None) -> int:
    result = benchmark_train(cfg.samples, cfg.batch_size, cfg.epochs, cfg.preset)
    return finish("train", cfg, result, format_train_benchmark)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.train``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
