"""Hyper-parameter search per curriculum stage on cached features (Ray Tune, ASHA): ``oneencoder tune``.

Each trial trains one stage in its own Ray process (``train_loop.fit_stage``): the same model, loss,
schedule, validation and early stopping as the training job, on the cached features the job reads,
from the weights the previous stage ended with. No encoder runs, so a trial costs seconds. ASHA
stops the trials whose validation loss trails at each rung. The stage is then trained by the
training job with the best trial's settings before the next stage is searched, and the whole search
is written into the artifact's provenance.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from pipeline.train.config import StageConfig, TuneSettings

log = logging.getLogger(__name__)
SEARCHED = ("lr", "steps", "weight_decay", "temperature")


def tuned_stage(stage: StageConfig, best: dict[str, Any]) -> StageConfig:
    """``stage`` with the searched settings of ``best`` (epochs automatic, so the step budget applies)."""
    return stage.model_copy(update={"lr": float(best["lr"]), "steps": int(best["steps"]), "epochs": None,
                                    "weight_decay": float(best["weight_decay"]),
                                    "loss": stage.loss.model_copy(update={"temperature": float(best["temperature"])})})


def search_stage(plan, entry: bytes | None, settings: TuneSettings, seed: int, output: str) -> dict[str, Any]:
    """ASHA over lr, step budget, weight decay and temperature for one stage plan; returns every trial and the best."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    config = {**plan.worker_config(seed), "init_weights": entry, "threads": max(1, int(settings.cpus_per_trial))}
    data = {part: {n: np.ascontiguousarray(getattr(plan, part)[n], dtype=np.float32) for n in plan.names}
            for part in ("train", "val")}
    max_t = max(plan.stage.model_copy(update={"epochs": None, "steps": s}).resolved(plan.steps_per_epoch).epochs
                for s in settings.steps)
    space = {"lr": tune.loguniform(*settings.lr), "steps": tune.choice(settings.steps),
             "weight_decay": tune.loguniform(*settings.weight_decay), "temperature": tune.uniform(*settings.temperature)}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, plan_config=config, data=data), {"cpu": settings.cpus_per_trial}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=settings.trials,
                                    scheduler=ASHAScheduler(max_t=max_t, grace_period=min(settings.grace_epochs, max_t),
                                                            reduction_factor=settings.reduction_factor),
                                    search_alg=BasicVariantGenerator(random_state=seed + plan.index)),
        run_config=tune.RunConfig(name=f"tune-{plan.label}", storage_path=os.path.join(output, "_ray"), verbose=0))
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"stage {plan.label}: {len(results.errors)} of {settings.trials} trials failed; first: "
                           f"{results.errors[0]}")
    trials = []
    for result in results:
        frame = result.metrics_dataframe
        trials.append({**{k: result.config[k] for k in SEARCHED}, "epochs_run": int(len(frame)),
                       "best_val_loss": float(frame["val_loss"].min()),
                       "best_val_recall@1": float(frame.loc[frame["val_loss"].idxmin(), "val_recall_at_1"])})
    trials.sort(key=lambda t: t["best_val_loss"])
    return {"stage": plan.label, "trials": trials, "best": {k: trials[0][k] for k in SEARCHED},
            "best_val_loss": trials[0]["best_val_loss"], "max_epochs": max_t}


def _trial(space: dict[str, Any], plan_config: dict[str, Any], data: dict[str, dict[str, np.ndarray]]) -> None:
    """One Tune trial: the stage with these settings, trained in this process; reports each epoch to ASHA."""
    import torch
    from ray import tune

    from pipeline.train.loop import fit_stage

    torch.set_num_threads(plan_config["threads"])
    stage = tuned_stage(StageConfig(**plan_config["stage"]), space).resolved(plan_config["steps_per_epoch"])
    # the object store's arrays are read-only: one writable copy per trial
    tensors = {part: {n: torch.from_numpy(np.array(a)) for n, a in arrays.items()} for part, arrays in data.items()}
    fit_stage({**plan_config, "stage": stage.model_dump(mode="json")}, tensors["train"], tensors["val"],
              on_epoch=lambda m: tune.report({"val_loss": m["val/loss"], "val_recall_at_1": m["val/recall@1"],
                                              "epoch": m["epoch"]}))
