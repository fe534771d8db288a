"""Losses: bounded learnable temperature, InfoNCE, Wang-Isola terms, Symile."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.train.config import LossConfig
from pipeline.train.loop import _epochs_since_best
from pipeline.train.losses import ContrastiveLoss, info_nce, info_nce_bank, symile, uniformity


def unit(x):
    return nn.functional.normalize(x, dim=-1)


def test_temperature_stays_in_bounds_and_learns():
    loss = ContrastiveLoss(LossConfig(temperature=0.07, min_temperature=0.01, max_temperature=1.0))
    assert abs(float(loss.temperature.detach()) - 0.07) < 1e-6
    a, b = unit(torch.randn(16, 8)), unit(torch.randn(16, 8))
    loss(a, b)["loss"].backward()
    assert loss.raw_temperature.grad is not None and loss.raw_temperature.grad.abs() > 0
    with torch.no_grad():
        loss.raw_temperature.fill_(1e6)
    assert float(loss.temperature.detach()) <= 1.0
    with torch.no_grad():
        loss.raw_temperature.fill_(-1e6)
    assert float(loss.temperature.detach()) >= 0.01 - 1e-6  # float32 rounding of the bound
    with pytest.raises(ValueError, match="must lie inside"):
        ContrastiveLoss(LossConfig(temperature=2.0))


def test_info_nce_prefers_aligned_pairs():
    a = unit(torch.randn(32, 16))
    aligned = info_nce(a, a, torch.tensor(0.1))
    shuffled = info_nce(a, a[torch.randperm(32)], torch.tensor(0.1))
    assert aligned < shuffled


def test_uniformity_is_lower_for_spread_points():
    spread = unit(torch.randn(64, 16))
    clumped = unit(torch.ones(64, 16) + 0.01 * torch.randn(64, 16))
    assert uniformity(spread) < uniformity(clumped)


def test_symile_and_weighted_terms():
    a, b, c = (unit(torch.randn(8, 16)) for _ in range(3))
    assert torch.isfinite(symile(a, b, c, torch.tensor(0.1)))
    terms = ContrastiveLoss(LossConfig(infonce=1.0, align=0.5, uniform=0.1, symile=0.2))(a, b, c)
    expected = terms["infonce"] + 0.5 * terms["align"] + 0.1 * terms["uniform"] + 0.2 * terms["symile"]
    torch.testing.assert_close(terms["loss"], expected)


def test_matryoshka_averages_infonce_over_the_whole_vector_and_each_renormalised_prefix():
    a, b = unit(torch.randn(16, 32)), unit(torch.randn(16, 32))
    loss = ContrastiveLoss(LossConfig(matryoshka=[8, 16]))
    t = loss.temperature
    expected = sum(info_nce(unit(a[:, :w]), unit(b[:, :w]), t) for w in (8, 16, 32)) / 3
    torch.testing.assert_close(loss(a, b)["infonce"], expected)
    bank = unit(torch.randn(40, 32))
    expected = sum(info_nce_bank(unit(a[:, :w]), unit(b[:, :w]), unit(bank[:, :w]), t) for w in (8, 16, 32)) / 3
    torch.testing.assert_close(loss(a, b, bank=bank)["infonce"], expected)
    for bad in ([16, 8], [12], [4], [8, 8]):
        with pytest.raises(ValueError, match="increasing widths, each a multiple of 8"):
            LossConfig(matryoshka=bad)


def test_matryoshka_widths_must_be_below_the_model_width():
    from pipeline.train.config import TrainConfig

    with pytest.raises(ValueError, match=r"matryoshka=\[64, 256\]: every width must be below model.d=256"):
        TrainConfig(stages=[{"new": "image", "anchor": "text", "loss": {"matryoshka": [64, 256]}}])


def test_early_stopping_counts_epochs_since_the_best():
    hist = [{"val/loss": v} for v in (2.0, 1.5, 1.7, 1.5, 1.6)]  # lower is better; ties keep the first
    assert _epochs_since_best(hist) == 3
    assert _epochs_since_best(hist[:2]) == 0


def test_a_stage_with_a_third_modality_feeds_symile():
    from pipeline.train.config import StageConfig
    from pipeline.train.loop import StagePair, build_stage_model

    stage = StageConfig(new="image", anchor="text", third="audio", loss={"symile": 0.5})
    config = {"stage": stage.model_dump(), "stage_index": 0, "seed": 0, "init_weights": None,
              "model_config": {"d": 16, "heads": 2, "ff": 32, "in_dims": {"audio": 8}, "tokens": {"audio": 1}},
              "new_modalities": {"image": (1, 8), "text": (1, 8)}}
    model, stage, parts = build_stage_model(config)
    pair = StagePair(model, ContrastiveLoss(stage.loss), stage)
    terms = pair({m: torch.randn(4, 1, 8) for m in ("image", "text", "audio")})
    assert {"infonce", "symile", "loss"} <= set(terms) and torch.isfinite(terms["loss"])
    with pytest.raises(ValueError, match="needs stage.third"):
        StageConfig(new="image", anchor="text", loss={"symile": 0.5})


def test_a_third_modality_must_already_be_aligned():
    from pipeline.config import ConfigError
    from pipeline.train.config import load_train_config

    ok = load_train_config(None, stages=[{"new": "image", "anchor": "text"},
                                         {"new": "audio", "anchor": "text", "third": "image", "loss": {"symile": 0.3}}])
    assert ok.stages[1].third == "image"
    with pytest.raises(ConfigError, match=r"stage 1: third and extra_anchors must be modalities aligned by an earlier stage \(got third='audio'"):
        load_train_config(None, stages=[{"new": "image", "anchor": "text", "third": "audio"}])
    with pytest.raises(ConfigError, match="stage 2: third='video' is not aligned yet"):
        load_train_config(None, stages=[{"new": "image", "anchor": "text"}, {"new": "audio", "anchor": "text", "third": "video"}])


def test_the_bank_adds_frozen_negatives_but_never_the_partner():
    torch.manual_seed(0)
    a, b = (nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(2))
    t = torch.tensor(0.1)
    logits = a @ b.T / t
    to_bank = (a @ b.T / t).masked_fill(torch.eye(4, dtype=torch.bool), float("-inf"))  # bank = b: partner masked
    labels = torch.arange(4)
    expected = (nn.functional.cross_entropy(torch.cat([logits, to_bank], 1), labels)
                + nn.functional.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(info_nce_bank(a, b, b, t), expected)
    # a bank of copies of the partners changes nothing; a bank of near misses makes the task harder
    torch.testing.assert_close(info_nce_bank(a[:1], b[:1], b[:1].repeat(5, 1), t), info_nce(a[:1], b[:1], t))
    near = nn.functional.normalize(a + 0.1 * torch.randn(4, 8), dim=-1)
    assert info_nce_bank(a, b, near, t) > info_nce(a, b, t)


def test_extra_anchors_add_an_infonce_term_each_and_must_be_aligned():
    from pipeline.config import ConfigError
    from pipeline.train.config import StageConfig, load_train_config, parse_stage_list
    from pipeline.train.loop import StagePair, build_stage_model

    assert parse_stage_list("image:text,video:text+image") == [
        {"new": "image", "anchor": "text"}, {"new": "video", "anchor": "text", "extra_anchors": ["image"]}]
    stage = StageConfig(new="video", anchor="text", extra_anchors=["image"])
    config = {"stage": stage.model_dump(), "stage_index": 1, "seed": 0, "init_weights": None,
              "model_config": {"d": 16, "heads": 2, "ff": 32, "in_dims": {"image": 8, "text": 8}, "tokens": {"image": 1, "text": 1}},
              "new_modalities": {"video": (1, 8)}}
    model, stage, _ = build_stage_model(config)
    pair = StagePair(model, ContrastiveLoss(stage.loss), stage)
    terms = pair({m: torch.randn(4, 1, 8) for m in ("video", "text", "image")})
    torch.testing.assert_close(terms["loss"], terms["infonce"] + terms["infonce/image"])
    for stages, message in (("image:text,video:text+audio", "stage 2: extra anchor 'audio' is not aligned yet"),
                            ("image:text+video", "stage 1: third and extra_anchors must be modalities aligned"),
                            ("image:text,video:text+text", "a stage needs distinct modalities"),
                            ("image:text,video:text+", "expected 'new:anchor' or 'new:anchor\\+other'")):
        with pytest.raises(ConfigError, match=message):
            load_train_config(None, stages=stages)
    with pytest.raises(ConfigError, match="stage 1: negatives 'bank' needs a frozen anchor"):
        load_train_config(None, stages=[{"new": "image", "anchor": "text", "negatives": "bank"}])


def _ddp_worker(rank: int, world: int, rendezvous: str, a: torch.Tensor, b: torch.Tensor, out) -> None:
    import torch.distributed as dist

    from pipeline.train.losses import info_nce_across_workers

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        half = len(a) // world
        mine_a = a[rank * half:(rank + 1) * half].clone().requires_grad_(True)
        loss = info_nce_across_workers(mine_a, b[rank * half:(rank + 1) * half], torch.tensor(0.1))
        loss.backward()
        out.put((rank, float(loss.detach()), mine_a.grad.numpy()))  # by value: not shared memory of an exiting process
    finally:
        dist.destroy_process_group()


def test_ddp_workers_contrast_against_every_workers_batch(tmp_path):
    """Two gloo workers, each with half the batch: the mean of their losses is InfoNCE over the whole batch,
    and each worker's rows get the gradient of that whole-batch loss (DDP averages)."""
    import numpy as np
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    a, b = (nn.functional.normalize(torch.randn(8, 16), dim=-1) for _ in range(2))
    # the workers meet through a file of this test's own: no port to pick, free it and hope no one takes it first
    rendezvous = str(tmp_path / "rendezvous")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, rendezvous, a, b, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    full_a = a.clone().requires_grad_(True)
    expected = info_nce(full_a, b, torch.tensor(0.1))
    expected.backward()
    assert abs(sum(r[1] for r in results) / 2 - float(expected)) < 1e-5
    # worker r's own rows: the gradient of its loss plus what the other worker's loss sent back through the gather,
    # halved by DDP's averaging = the whole-batch gradient
    torch.testing.assert_close(torch.from_numpy(np.concatenate([r[2] for r in results])) / 2, full_a.grad, atol=1e-5, rtol=1e-4)
