"""The paper's configuration pair, jobs/configs/embed_paper.yaml and train_paper.yaml, run as shipped but for its size:
the tiny encoders on CPU, a small corpus, one epoch a stage, batches that fit it. Everything else (tokens: all and the
caps, the model's shape, the optimiser, temperature, negatives, the curriculum) is the file's."""
from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBED, TRAIN = (os.path.join(ROOT, "jobs", "configs", f"{name}_paper.yaml") for name in ("embed", "train"))


def test_the_paper_configs_say_what_the_paper_does():
    from pipeline.embed.config import load_embed_config
    from pipeline.train.config import load_train_config

    embed, train = load_embed_config(EMBED), load_train_config(TRAIN)
    assert embed.preset == "paper"
    assert {m.value: (e.tokens, e.max_tokens) for m, e in embed.encoders.items()} == {
        "image": ("all", 197), "text": ("all", 128), "audio": ("all", 500), "video": ("all", 1568), "depth": ("all", 197)}
    assert (train.model.d, train.model.layers, train.model.heads, train.model.ff) == (768, 4, 4, 2048)
    assert [f"{s.new.value}:{s.anchor.value}" for s in train.stages] == ["image:text", "audio:text", "video:text"]
    assert [s.batch_size for s in train.stages] == [512, 64, 32]
    for stage in train.stages:
        assert (stage.lr, stage.weight_decay, stage.negatives, stage.schedule) == (1e-3, 1e-3, "batch", "constant")
        assert abs(stage.loss.temperature - np.exp(-2.5)) < 1e-3 and stage.patience == 10
    with open(TRAIN) as fh:
        assert fh.read().count("DIFFERS:") == 4  # each deliberate difference flagged where it is set


@pytest.mark.slow
def test_the_paper_configs_run_at_tiny_size(ray_session, tmp_path):
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.job import run_embed
    from pipeline.inference import load_model
    from pipeline.store.features import read_features
    from pipeline.store.files import read_json
    from pipeline.synthetic.corpus import write_sample_corpus
    from pipeline.train.config import load_train_config
    from pipeline.train.job import run_train

    manifest = write_sample_corpus(str(tmp_path / "corpus"), n=16, modalities=("image", "text", "audio", "video"),
                                   vary=True)
    with open(EMBED) as fh:
        embed = yaml.safe_load(fh)
    cpu = {"num_gpus": 0, "actors": 1, "num_cpus": 1, "precision": "float32", "batch_size": 8}
    embed.update(preset="tiny", input=manifest, output=str(tmp_path / "store"), modalities=["image", "text", "audio", "video"],
                 encoders={m: {**e, **cpu} for m, e in embed["encoders"].items()})
    run_embed(EmbedConfig(**embed))
    for modality, cap in (("image", 197), ("text", 128), ("audio", 500), ("video", 1568)):
        table = read_features(embed["output"], modality)
        assert table.num_rows == 16 and table.schema.field("embedding").type.shape == [cap, 32]
        assert 1 <= min(table.column("tokens").to_pylist()) and max(table.column("tokens").to_pylist()) <= cap

    with open(TRAIN) as fh:
        train = yaml.safe_load(fh)
    output = str(tmp_path / "model")
    train.update(features=embed["output"], output=output, use_gpu=False, cpus_per_worker=1, val_fraction=0.25,
                 stages=[{**s, "epochs": 1, "batch_size": 4} for s in train["stages"]])
    run_train(load_train_config(None, **train))
    config = read_json(os.path.join(output, "config.json"))
    assert {k: config["model"][k] for k in ("d", "layers", "heads", "ff")} == {"d": 768, "layers": 4, "heads": 4, "ff": 2048}
    assert config["model"]["tokens"] == {"image": 197, "text": 128, "audio": 500, "video": 1568}
    vectors = load_model(output).embed(["a red circle"], "text")
    assert vectors.shape == (1, 768) and abs(float(np.linalg.norm(vectors)) - 1) < 1e-5
