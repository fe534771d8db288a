"""The end-to-end demo: generate a paired corpus, embed it, train three stages, evaluate, say how to serve.

Everything runs offline on local Ray with the tiny encoders.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Callable

import yaml
from pydantic import Field

from pipeline.config import ConfigError, StrictModel, cache_root
from pipeline.store.files import read_json, write_json

STAGES = "image:text,audio:text,video:text"
PARTS = ("corpus", "features", "model")  # what the demo writes under its workdir


class DemoConfig(StrictModel):
    workdir: str | None = Field(None, description="Folder for corpus, features, model; null = $ONEENCODER_CACHE/demo, "
                                "else ~/.cache/oneencoder/demo (nothing is written into the current folder).")
    samples: int = Field(96, ge=24, description="Paired samples to generate (at least 24: one per concept).")
    epochs: int | None = Field(None, ge=1, description="Epochs of each stage; null = the training job's automatic budget.")
    overwrite: bool = Field(False, description="Replace an earlier demo run in the workdir (default: resume it).")


class DemoIncomplete(RuntimeError):
    """A step of the demo left work undone (a modality with shards missing, a stage not trained): exit 1."""


def run(cfg: DemoConfig, args: object = None) -> int:
    """`oneencoder demo`: the whole round trip on the local machine. A step left incomplete (DemoIncomplete, or a
    stalled embed) ends it with exit status 1 (``registry.execute``); a rerun resumes."""
    run_demo(cfg.workdir or default_workdir(), cfg.samples, cfg.epochs, overwrite=cfg.overwrite)
    return 0


def default_workdir() -> str:
    """Where the demo writes when no --workdir is given: under the cache root, never into the current folder
    (which is often the project's checkout)."""
    return os.path.join(cache_root(), "demo")


def prepare_workdir(workdir: str, samples: int, epochs: int | None, overwrite: bool = False) -> None:
    """Check ``workdir`` holds nothing or a demo run with the same settings (which then resumes).

    With ``overwrite``, an earlier run's folders are deleted first. Raises ConfigError otherwise.
    """
    record, wanted = os.path.join(workdir, "demo.json"), {"samples": samples, "epochs": epochs}
    found = [p for p in PARTS if os.path.exists(os.path.join(workdir, p))]
    if found and not overwrite:
        try:
            previous = read_json(record)
        except (OSError, ValueError):  # none, or not ours: treat the folders as other output
            previous = None
        if not (isinstance(previous, dict) and {"samples", "epochs"} <= set(previous)):
            previous = None
        if previous != wanted:
            held = (f"a demo run with {previous['samples']} samples and {_epochs(previous['epochs'])} epochs" if previous
                    else f"other output ({', '.join(found)})")
            raise ConfigError(f"--workdir {workdir} holds {held}; expected {samples} samples and {_epochs(epochs)} epochs. "
                              "Pass --overwrite to replace it, or choose another --workdir")
    if overwrite:
        for part in found:
            shutil.rmtree(os.path.join(workdir, part))
    os.makedirs(workdir, exist_ok=True)
    write_json(record, wanted)


def _epochs(epochs: int | None) -> str:
    return "automatic" if epochs is None else str(epochs)


def run_demo(workdir: str, samples: int = 96, epochs: int | None = None, say: Callable[[str], None] = print,
             overwrite: bool = False) -> dict[str, Any]:
    """Corpus → feature store → three-stage model → evaluation report, under ``workdir``.

    Checks the workdir first (``prepare_workdir``; a rerun with the same settings resumes, embedding and
    finished stages are skipped), then connects to Ray or starts a local instance (``init_ray``).
    """
    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import run_embed
    from pipeline.embed.resume import format_summary
    from pipeline.eval.report import evaluate, format_report
    from pipeline.runtime import init_ray
    from pipeline.synthetic.corpus import write_sample_corpus
    from pipeline.synthetic.draw import concept
    from pipeline.train.config import load_train_config, parse_stage_list
    from pipeline.train.job import run_train

    prepare_workdir(workdir, samples, epochs, overwrite)
    init_ray()
    started = time.time()  # "done in" counts the work, not Ray start-up
    corpus, features, model = (os.path.join(workdir, d) for d in PARTS)

    say(f"[1/4] generating {samples} paired samples (image, caption, tone, clip per colour x shape concept) in {corpus}")
    manifest = write_sample_corpus(corpus, n=samples, vary=True)
    labels = os.path.join(corpus, "labels.yaml")
    with open(labels, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"templates": ["a {}", "a picture of a {}"],
                        "labels": {f"s{i:05d}": "{} {}".format(*concept(i)) for i in range(samples)}}, fh)

    say(f"[2/4] embedding with the frozen tiny encoders (Ray Data) into {features}")
    embed_cfg = load_embed_config(None, input=manifest, output=features, preset="tiny")
    summary = run_embed(embed_cfg)
    say(format_summary(summary))
    missing = [m for m, record in summary["modalities"].items() if not record["complete"]]
    if missing:
        raise DemoIncomplete(f"embedding left {', '.join(missing)} incomplete (see the summary above); run the demo "
                             "again to resume it")

    budget = (f"{epochs} epochs each" if epochs else
              "the training defaults: about 1500 steps each, stopped when validation loss stops falling")
    say(f"[3/4] training {STAGES.replace(',', ', then ')} ({budget}, Ray Train) into {model}")
    # batches of 16: a small corpus still gets several optimizer steps per epoch
    train_cfg = load_train_config(None, features=features, output=model, stages=parse_stage_list(STAGES, batch_size=16),
                                  epochs=epochs, val_fraction=0.2)
    trained = run_train(train_cfg)
    done = [s["stage"] for s in trained["stages"]]
    if len(done) != len(STAGES.split(",")):
        raise DemoIncomplete(f"training finished {len(done)} of the stages {STAGES} ({', '.join(done) or 'none'}); "
                             "run the demo again to resume it")
    for s in trained["stages"]:
        say(f"  stage {s['stage']}: best epoch {s['best_epoch']}/{s['epochs_run']}, "
            f"val recall@1 {s['best']['val/recall@1']:.3f}, {s['seconds']} s"
            + (" (validation loss still falling)" if s.get("still_improving") else ""))

    say("[4/4] evaluating (retrieval over the whole corpus, zero-shot on the concept names, modality gap)")
    report = evaluate(model, features, labels)
    say(format_report(report))
    say(f"\ndone in {time.time() - started:.0f} s. Serve the model:\n"
        f"  oneencoder serve --model {model} --features {features}\n"
        f"  curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' "
        "-d '{\"model\": \"oneencoder\", \"input\": [\"a red circle\"]}'")
    return {"manifest": manifest, "features": features, "model": model, "summary": summary, "train": trained,
            "report": report}


if __name__ == "__main__":
    from jobs import registry

    sys.exit(registry.main("demo"))
