"""Progressive training on a generated feature store: curriculum, freezing, artifact, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import ConfigError
from pipeline.eval.metrics import both_directions
from pipeline.inference import load_model
from pipeline.model import ModelConfig, OneEncoder, count_trainable, token_mask
from pipeline.store.features import embeddings, read_features
from pipeline.train.config import load_train_config
from pipeline.train.job import run_train

from tests.processes import train_worker_pids
from tests.settings import BASELINE_EPOCHS, SMALL_EPOCHS, VAL_FRACTION


def test_stage_one_model_is_about_two_million_parameters():
    model = OneEncoder(ModelConfig(in_dims={"image": 768, "text": 768}, tokens={"image": 1, "text": 1}))
    assert 1_700_000 < count_trainable(model) < 2_100_000


def test_padding_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    model = OneEncoder(ModelConfig(d=32, heads=4, ff=64, in_dims={"image": 16}, tokens={"image": 3})).eval()
    x = torch.randn(1, 3, 16)
    padded = torch.cat([x, torch.randn(1, 2, 16) * 100], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        torch.testing.assert_close(model("image", x), model("image", padded, mask), atol=1e-5, rtol=1e-5)


def test_zero_vectors_are_padding_whatever_the_cap():
    """tokens: all stores each sequence padded with zero vectors to the cap: with no mask given, an item's vector is
    the same at any padding, and the same as its tokens alone; a real token is never dropped."""
    torch.manual_seed(0)
    model = OneEncoder(ModelConfig(d=32, heads=4, ff=64, in_dims={"text": 16}, tokens={"text": 12})).eval()
    with torch.no_grad():
        model.positions["text"].copy_(torch.randn(12, 32))  # trained positions: padding must not get any weight
        x = torch.randn(2, 5, 16)
        x[1, 3:] = 0  # the second item is 3 tokens long
        alone = torch.cat([model("text", x[:1]), model("text", x[1:2, :3])])
        for cap in (5, 8, 12):
            padded = torch.nn.functional.pad(x, (0, 0, 0, cap - 5))
            torch.testing.assert_close(model("text", padded), alone, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model("text", x[1:2, :3]), model("text", x[1:2, :2]), atol=1e-3)  # each token counts
    assert token_mask(torch.ones(2, 1, 4)) is None  # K = 1: nothing to mask
    assert token_mask(torch.zeros(1, 3, 4)).tolist() == [[True, False, False]]  # never all padding


def test_the_training_workers_count_the_examples_they_see_in_ray_metrics(trained):
    """Each stage's examples, every epoch, counted by the Ray Train workers as they train (at least: the session's
    other training runs count too)."""
    from tests.ray_metrics import job_counters

    _, result, _ = trained
    wanted = {("ray_oneencoder_job_rows_total", s["stage"].split("-", 1)[1].replace("-", ":")): s["epochs_run"]
              for s in result["stages"]}  # "1-image-text" → image:text; at least one example an epoch
    got = job_counters("train", wanted)
    assert all(got.get(k, 0) >= v for k, v in wanted.items()), (got, wanted)


def test_artifact_holds_config_weights_encoders_metrics_provenance(trained):
    output, result, _ = trained
    for name in ("config.json", "model.safetensors", "encoders.json", "metrics.json", "provenance.json"):
        assert os.path.exists(os.path.join(output, name)), name
    assert not [f for _, _, fs in os.walk(output) for f in fs if f.endswith((".pt", ".pth", ".pkl", ".bin"))]
    stages = result["stages"]
    assert [s["stage"] for s in stages] == ["1-image-text", "2-audio-text", "3-video-text"]
    for s in stages:
        assert len(s["history"]) == s["epochs_run"] <= s["epochs"] == SMALL_EPOCHS  # as the fixture asked
        for epoch in s["history"]:
            assert np.isfinite(epoch["loss"]) and 0.01 <= epoch["temperature"] <= 1.0
            assert {f"val/{s['new']}->text/recall@{k}" for k in (1, 5, 10)} <= set(epoch)


def test_a_stage_that_ends_still_improving_says_so(trained):
    from pipeline.store.files import read_json
    from pipeline.train.job import still_improving

    falling = [3.0 - 0.1 * i for i in range(30)]
    assert still_improving(falling[:10], 10) and not still_improving(falling[:10], 12)  # stopped early: converged
    assert not still_improving(falling[:9] + [2.5], 10)                             # up to 19 epochs: the last one
    assert still_improving(falling[:28] + [9, 9], 30) and not still_improving(falling[:27] + [9, 9, 9], 30)  # last tenth
    assert not still_improving(falling[:20] + [1.1 - 0.001 * i for i in range(10)], 30)  # < 1 % lower: flat
    output, result, _ = trained
    recorded = read_json(os.path.join(output, "metrics.json"))["stages"]
    assert len(recorded) == len(result["stages"]) == 3
    for stage, saved in zip(result["stages"], recorded):
        # the rule spelled out for this fixture's stages of SMALL_EPOCHS = 20 epochs: every epoch run (no early stop),
        # the best validation loss in the last tenth (epoch 19 or 20) and over 1 % below the best of epochs 1-18
        losses = [h["val/loss"] for h in stage["history"]]
        assert stage["epochs"] == SMALL_EPOCHS == 20 and stage["best_epoch"] == 1 + losses.index(min(losses))
        expected = (len(losses) == 20 and stage["best_epoch"] >= 19 and min(losses[18:]) < 0.99 * min(losses[:18]))
        assert stage["still_improving"] is expected and saved["still_improving"] is expected, (stage["stage"], losses)


def test_later_stages_leave_earlier_parameters_bit_identical(trained):
    output, _, _ = trained
    stage1 = load_file(os.path.join(output, "stages", "1-image-text", "model.safetensors"))
    stage2 = load_file(os.path.join(output, "stages", "2-audio-text", "model.safetensors"))
    final = load_file(os.path.join(output, "model.safetensors"))
    assert set(stage1) < set(stage2) < set(final)
    for earlier in (stage1, stage2):
        for key, value in earlier.items():
            assert torch.equal(value, final[key]), key
    assert any("adapters.video" in k for k in final) and any("adapters.audio" in k for k in final)


def test_image_text_retrieval_is_unchanged_by_later_stages(trained, feature_store):
    output, _, _ = trained
    model = load_model(output)
    ids = sorted(set(read_features(feature_store, "image").column("id").to_pylist()))[:200]
    feats = {m: dict(zip(read_features(feature_store, m).column("id").to_pylist(), embeddings(read_features(feature_store, m))))
             for m in ("image", "text")}
    image = np.stack([feats["image"][i] for i in ids]).astype(np.float32)
    text = np.stack([feats["text"][i] for i in ids]).astype(np.float32)
    final = both_directions(model.project(image, "image"), model.project(text, "text"), "image", "text")
    stage1 = OneEncoder(ModelConfig(**{**model.model.config.__dict__, "in_dims": {"image": 32, "text": 32},
                                       "tokens": {"image": 1, "text": 1}})).eval()
    stage1.load_state_dict(load_file(os.path.join(output, "stages", "1-image-text", "model.safetensors")))
    with torch.no_grad():
        a, b = stage1("image", torch.from_numpy(image)).numpy(), stage1("text", torch.from_numpy(text)).numpy()
    assert both_directions(a, b, "image", "text") == final


def test_load_model_embeds_raw_inputs_into_the_shared_space(trained, feature_store, tmp_path):
    import io

    from PIL import Image

    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.corpus import concept_inputs
    from pipeline.synthetic.draw import encode_audio

    output, _, _ = trained
    model = load_model(output)
    sample = concept_inputs(0, np.random.default_rng(0))  # the store's sample c00000
    text = model.embed([sample["text"], "a blue square"], "text")
    assert text.shape == (2, 256) and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    buf = io.BytesIO()
    Image.fromarray(sample["image"]).save(buf, "PNG")
    image_path = tmp_path / "c0.png"
    image_path.write_bytes(buf.getvalue())
    by_bytes = model.embed([buf.getvalue()], "image")
    np.testing.assert_allclose(model.embed([str(image_path)], "image"), by_bytes, atol=1e-6)
    encode_audio(str(tmp_path / "c0.wav"), sample["audio"], find_ffmpeg())  # 16-bit PCM: as good as the float16 store
    frames = sample["video"]  # at 4 fps, in lossless RGB H.264 (a lossy codec alone moves the vector by ~1e-2)
    assert frames.shape == (4, 32, 32, 3)
    subprocess.run([find_ffmpeg(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "32x32", "-r", "4",
                    "-i", "pipe:0", "-c:v", "libx264rgb", "-qp", "0", str(tmp_path / "c0.mkv")],
                   input=frames.tobytes(), check=True, timeout=60)
    by_files = {m: model.embed([str(tmp_path / name)], m) for m, name in (("audio", "c0.wav"), ("video", "c0.mkv"))}
    for modality, raw in (("image", by_bytes), ("text", text[:1]), ("audio", by_files["audio"]), ("video", by_files["video"])):
        table = read_features(feature_store, modality)
        row = table.column("id").to_pylist().index("c00000")
        cached = model.project(embeddings(table)[row:row + 1].astype(np.float32), modality)
        assert raw.shape == cached.shape == (1, 256), modality
        np.testing.assert_allclose(raw, cached, atol=5e-3, err_msg=modality)  # features are stored in float16
    with pytest.raises(ValueError, match="item 1: .*not an image format"):
        model.embed([str(image_path), b"not an image"], "image")


# The quality bar's corpora: the suite's style, where image and video retrieval are at or near 1.0 (only audio is hard
# there), the hard style, where they are not (so that a worse model shows), and the other style, unseen by anything
# tuned on the suite's. Their stores and models (tests/conftest.py), by name.
QUALITY_CORPORA = {"suite": ("concept_store", "trained_defaults"), "hard": ("hard_concept_store", "trained_hard"),
                   "other": ("other_concept_store", "trained_other")}
# Where the sweep found the progressive model worse than the joint baseline in some run, the test asserts what held
# in all of them: on the hard style, audio (aligned in stage 2 to a text space that stage 1 learned from harder
# pictures) trailed by up to 0.152 and was found worse at the 5% level in one run of nine (p = 0.010).
ABOVE_CHANCE_ONLY = {("hard", "audio->text")}


@pytest.mark.slow
@pytest.mark.parametrize("corpus", list(QUALITY_CORPORA))
def test_progressive_model_against_the_baseline(corpus, request, capsys):
    """The defaults against the jointly trained pairwise baseline, on three corpus styles. What holds on every
    machine, as measured by `python -m benchmarks.quality_sweep` over seeds 0-3, torch thread counts 1 and 2, and
    PyTorch's plain (non-vector) kernels (8 or 9 runs per style; docs/evaluation.md, Quality bar), not on one run.
    Every thread count is pinned (encode 2, train 1, baseline 1), so the remaining spread is the CPU's."""
    from pipeline.eval.baseline import compare

    store_fixture, model_fixture = QUALITY_CORPORA[corpus]
    store, labels = request.getfixturevalue(store_fixture)
    output, _, _ = request.getfixturevalue(model_fixture)
    report = compare(store, output, labels, VAL_FRACTION, epochs=BASELINE_EPOCHS, threads=1)
    with capsys.disabled():
        print(f"\n{corpus} corpus: concept R@1 on held-out pairs (progressive, no-flag training, vs 2-layer MLP "
              f"baseline, {BASELINE_EPOCHS} epochs, same features):")
        for pair, r in report.items():
            print(f"  {pair}: progressive {r['progressive']:.3f}  baseline {r['baseline']:.3f}  chance {r['chance']:.3f}  "
                  f"items only one gets right: {r['only_progressive']} vs {r['only_baseline']}  p(worse) {r['p_worse']:.2f}")
    assert set(report) == {"image->text", "audio->text", "video->text"}, report
    for pair, r in report.items():
        if (corpus, pair) in ABOVE_CHANCE_ONLY:
            assert r["progressive"] > 3 * r["chance"], (pair, r)  # swept: >= 4.1x
            continue
        assert r["progressive"] > 4 * r["chance"], (pair, r)  # swept: >= 4.8x
        # no worse: a one-sided paired sign test on the held-out items must not find the progressive model worse
        # at the 5% level (swept: p >= 0.105), and it trails the baseline by less than 0.12 R@1 (swept: <= 0.074;
        # on 95 held-out items one item is 0.011)
        assert r["p_worse"] > 0.05 and r["baseline"] - r["progressive"] < 0.12, (pair, r)
    if corpus == "hard":  # the style exists so that these measure something: below 1.0, far from it
        assert max(report[p]["progressive"] for p in ("image->text", "video->text")) < 0.8, report


def test_rerun_skips_finished_stages(trained, caplog, tmp_path):
    output, result, cfg = trained
    import shutil

    copy = shutil.copytree(output, tmp_path / "model")  # the rerun rewrites the artifact: the shared one stays as built
    caplog.set_level("INFO", logger="pipeline.train.job")
    again = run_train(cfg.model_copy(update={"output": str(copy)}))
    assert [s["history"] for s in again["stages"]] == [s["history"] for s in result["stages"]]
    assert caplog.text.count("already trained") == 3


def test_a_changed_stage_retrains_every_stage_after_it(feature_store, tmp_path):
    """Only a leading run of saved, unchanged stages is reused: stage 2 was aligned to stage 1 as it was."""
    from pipeline.store.files import write_json
    from pipeline.store.pairs import load_features
    from pipeline.train.job import plan_curriculum, reusable_stages

    features = {n: load_features(feature_store, n, {}) for n in ("image", "text", "audio")}
    cfg = load_train_config(None, epochs=1, features=feature_store, output=str(tmp_path), stages="image:text,audio:text")
    plans, _ = plan_curriculum(cfg, features, str(tmp_path))
    assert reusable_stages(plans) == 0
    for plan in plans[1:]:  # stage 2 saved, stage 1 not (e.g. retrained with other settings since)
        os.makedirs(plan.folder)
        write_json(os.path.join(plan.folder, "stage.json"), {"fingerprint": plan.fingerprint, "record": {}})
    assert reusable_stages(plans) == 0
    os.makedirs(plans[0].folder)
    write_json(os.path.join(plans[0].folder, "stage.json"), {"fingerprint": plans[0].fingerprint, "record": {}})
    assert reusable_stages(plans) == 2
    changed = load_train_config(None, features=feature_store, output=str(tmp_path),
                                stages=[{"new": "image", "anchor": "text", "epochs": 2}, {"new": "audio", "anchor": "text", "epochs": 1}])
    assert reusable_stages(plan_curriculum(changed, features, str(tmp_path))[0]) == 0


def test_bad_curricula_are_refused(feature_store, tmp_path):
    with pytest.raises(ConfigError, match="anchor 'video' is not aligned yet"):
        load_train_config(None, features=feature_store, output=str(tmp_path), stages="image:text,audio:video")
    with pytest.raises(ConfigError, match="stages.1.new = 'smell'.*unknown modality 'smell'"):
        load_train_config(None, features=feature_store, output=str(tmp_path), stages="image:text,smell:text")
    with pytest.raises(ConfigError, match="has no features for 'depth'"):  # a registered modality the store lacks
        run_train(load_train_config(None, features=feature_store, output=str(tmp_path), stages="image:text,depth:text"))


def _wait_for_checkpoint(output: str, stages_finished: int, timeout_s: float = 300, alive=lambda: True) -> None:
    """Until the latest checkpoint *registered* by the run under ``output`` (in Ray Train's snapshot, which
    is what a restart resumes from) has ``stages_finished`` stages behind it and an epoch of the next."""
    import glob
    import json

    deadline = time.time() + timeout_s
    while time.time() < deadline and alive():
        for snapshot in glob.glob(os.path.join(output, "_ray", "*", "checkpoint_manager_snapshot.json")):
            try:
                with open(snapshot) as fh:
                    latest = json.load(fh)["latest_checkpoint_result"]["checkpoint_dir_name"]
                with open(os.path.join(os.path.dirname(snapshot), latest, "state.json")) as fh:
                    state = json.load(fh)
            except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being replaced
                continue
            if len(state["finished"]) == stages_finished and state["epoch"] >= 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"no registered checkpoint with {stages_finished} finished stage(s) under {output}")


@pytest.mark.slow
def test_a_rerun_after_a_killed_driver_resumes_mid_curriculum(ray_session, feature_store, tmp_path):
    """The driver dies in stage 2: the rerun keeps stage 1 as trained and resumes stage 2 after its checkpoint."""
    output = tmp_path / "model"
    config = tmp_path / "train.yaml"
    # in_memory_mb 0: the shard streams through Ray Data every epoch, and stage 2's bank is read from the stream
    config.write_text(f"val_fraction: {VAL_FRACTION}\nkeep_checkpoints: null\ncheckpoint_every_steps: 1\nin_memory_mb: 0\nstages:\n"
                      "  - {new: image, anchor: text, epochs: 2, patience: 0}\n"
                      "  - {new: audio, anchor: text, epochs: 8, patience: 0}\n")  # a wide window to kill the driver in stage 2
    argv = ["--features", feature_store, "--output", str(output), "--config", str(config)]
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.train", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(str(output), 1, alive=lambda: proc.poll() is None)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.kill()  # SIGKILL: no clean-up in the driver; Ray then stops the job's controller and workers
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and train_worker_pids():
        time.sleep(0.2)
    assert not train_worker_pids(), "the killed driver's train workers still run 60 s later"
    assert not (output / "stages" / "1-image-text" / "stage.json").exists()
    result = run_train(load_train_config(str(config), features=feature_store, output=str(output)))
    first, second = (s["history"] for s in result["stages"])
    assert [h["epoch"] for h in first] == [1, 2] and {h["resumed_after_epoch"] for h in first} == {0}
    assert [h["epoch"] for h in second] == list(range(1, 9))
    assert second[-1]["resumed_after_epoch"] >= 1, "the rerun started stage 2 over instead of resuming it"


def _worker_logs_mention(text: str) -> bool:
    import glob

    import ray

    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    for path in glob.glob(os.path.join(logs, "worker-*.err")) + glob.glob(os.path.join(logs, "worker-*.out")):
        with open(path, errors="replace") as fh:
            if text in fh.read():
                return True
    return False


@pytest.mark.slow
def test_two_ddp_workers_survive_a_killed_worker(ray_session, feature_store, tmp_path):
    """Two DDP workers; one is SIGKILLed after the first checkpoint: the group restarts and resumes from it."""
    output = str(tmp_path / "ddp")
    cfg = load_train_config(None, epochs=4, features=feature_store, output=output, stages="image:text",
                            val_fraction=VAL_FRACTION, workers=2, cpus_per_worker=0.5, max_failures=1,
                            keep_checkpoints=None, checkpoint_every_steps=1, in_memory_mb=0)  # DDP shards streamed
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_train(cfg)))
    thread.start()
    _wait_for_checkpoint(output, 0, alive=thread.is_alive)
    victims = train_worker_pids()
    assert len(victims) == 2, victims
    os.kill(victims[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "training had not finished 600 s after the worker was killed"
    history = result["stages"][0]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[0]["resumed_after_epoch"] == 0 and history[-1]["resumed_after_epoch"] >= 1, history
    assert history[-1]["loss"] < history[0]["loss"]  # it kept learning across the restart
    assert _worker_logs_mention("stage image:text resumes after epoch"), "the restarted workers did not load a checkpoint"
    assert _worker_logs_mention("Wrapping provided model in DistributedDataParallel")


def test_the_default_budget_adapts_to_the_store():
    from pipeline.train.config import StageConfig

    stage = StageConfig(new="image", anchor="text")
    small, large = stage.resolved(6), stage.resolved(78_000)  # 500 pairs vs 5 M pairs, batches of 64
    assert (small.epochs, small.patience) == (200, 40) and (large.epochs, large.patience) == (1, 5)
    assert stage.resolved(100).epochs == 15 and StageConfig(new="audio", anchor="text", epochs=3).resolved(6).epochs == 3
    assert StageConfig(new="audio", anchor="text", patience=0).resolved(6).patience == 0  # 0 = no early stopping
    lrs = [stage.lr_factor(step, 1000) for step in range(1000)]
    assert lrs[0] == 1 / 50 and lrs[49] == 1.0 and abs(lrs[-1] - 0.1) < 1e-9  # warm-up over 5 %, cosine to 10 %
    assert all(b >= a for a, b in zip(lrs[:50], lrs[1:50])) and all(b <= a for a, b in zip(lrs[50:], lrs[51:]))
    constant = StageConfig(new="audio", anchor="text", schedule="constant", warmup=0)
    assert {constant.lr_factor(step, 100) for step in range(100)} == {1.0}


def test_a_stage_stops_patience_epochs_after_its_best_validation_loss(monkeypatch):
    """Early stopping in the stage loop, on a scripted validation loss: the stage ends `patience` epochs after its
    lowest validation loss (a tie is no improvement; the training loss plays no part), and patience 0 runs every epoch."""
    import pipeline.train.loop as loop
    from pipeline.train.config import StageConfig

    scripted = iter([])
    monkeypatch.setattr(loop, "_validate", lambda pair, stage, val: {"val/loss": next(scripted), "val/recall@1": 0.0})
    rows = {m: torch.randn(16, 1, 8) for m in ("image", "text")}

    def epochs_run(val_losses: list[float], patience: int) -> list[int]:
        nonlocal scripted
        scripted = iter(val_losses)
        stage = StageConfig(new="image", anchor="text", epochs=len(val_losses), patience=patience)
        plan = {"stage": stage.model_dump(mode="json"), "stage_index": 0, "seed": 0, "init_weights": None,
                "model_config": ModelConfig(d=16, heads=4, ff=16).model_dump(),
                "new_modalities": {"image": (1, 8), "text": (1, 8)}, "batch_size": 8, "steps_per_epoch": 2}
        _, history = loop.fit_stage(plan, rows, rows)
        return [h["epoch"] for h in history]

    falling_then_flat = [5.0, 4.0, 3.0, 3.5, 3.0, 3.2, 3.1, 2.0, 1.0, 0.5]  # best at epoch 3, a tie at 5
    assert epochs_run(falling_then_flat, patience=3) == [1, 2, 3, 4, 5, 6]  # 3 epochs without a lower loss
    assert epochs_run(falling_then_flat, patience=5) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # epoch 8 came in time
    assert epochs_run([4.0, 3.0, 3.1, 2.9, 3.0, 3.0, 3.3], patience=2) == [1, 2, 3, 4, 5, 6]  # the best moved to 4
    assert epochs_run(falling_then_flat, patience=0) == list(range(1, 11))  # 0 = no early stopping
    assert epochs_run([1.0] * 6, patience=1) == [1, 2]  # a flat loss never improves on the first epoch


@pytest.mark.slow
def test_the_no_flag_curriculum_trains_each_stage_until_validation_loss_stops_falling(trained_defaults):
    """The command with no budget flags: automatic epochs, warm-up and decay, early stopping by itself; a stage
    that reaches its cap (200 epochs here) does so with its validation loss flat, not still falling."""
    stages = trained_defaults[1]["stages"]
    assert stages[0]["epochs"] == 200 and stages[0]["epochs_run"] < 200  # the joint stage stops early by itself...
    assert stages[0]["epochs_run"] - stages[0]["best_epoch"] == max(5, 200 // 5)  # ...`patience` epochs after its best
    for stage in stages:
        history = stage["history"]
        assert not stage["still_improving"], (stage["stage"], stage["epochs_run"], stage["best_epoch"])
        if stage["epochs_run"] < stage["epochs"]:
            assert stage["epochs_run"] - stage["best_epoch"] == max(5, 200 // 5)  # stopped `patience` epochs after its best
        lrs = [h["lr"] for h in history]
        assert lrs.index(max(lrs)) < 20 and lrs[-1] < max(lrs)  # warmed up early, decaying since
        assert stage["best"]["val/loss"] < 0.8 * history[0]["val/loss"], [h["val/loss"] for h in history]


@pytest.mark.slow
def test_tune_searches_each_stage_then_trains_it_with_the_best_settings(ray_session, feature_store, tmp_path, capsys):
    """`oneencoder tune`: ASHA trials per stage on the cached features, the best settings trained and recorded."""
    from jobs.cli import main
    from pipeline.store.files import read_json

    config = tmp_path / "tune.yaml"
    config.write_text(f"val_fraction: {VAL_FRACTION}\n"
                      "tune: {trials: 2, steps: [6, 18], grace_epochs: 1, lr: [0.0002, 0.002], temperature: [0.05, 0.1]}\n")
    output = tmp_path / "m"
    assert main(["tune", "--features", feature_store, "--output", str(output), "--stages", "image:text,audio:text",
                 "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    provenance, metrics = read_json(str(output / "provenance.json")), read_json(str(output / "metrics.json"))
    search = provenance["tune"]
    assert search["settings"]["trials"] == 2 and [s["stage"] for s in search["stages"]] == ["1-image-text", "2-audio-text"]
    for record, stage, trained in zip(search["stages"], provenance["config"]["stages"], metrics["stages"]):
        trials = record["trials"]
        assert len(trials) == 2 and len({t["lr"] for t in trials}) == 2  # two sampled settings
        for t in trials:
            assert 0.0002 <= t["lr"] <= 0.002 and t["steps"] in (6, 18) and 0.05 <= t["temperature"] <= 0.1
            assert 1 <= t["epochs_run"] <= record["max_epochs"] and np.isfinite(t["best_val_loss"])
        best = min(trials, key=lambda t: t["best_val_loss"])
        assert record["best"] == {k: best[k] for k in ("lr", "steps", "weight_decay", "temperature")}
        # the stage the artifact holds was trained with the best trial's settings
        assert (stage["lr"], stage["steps"], stage["weight_decay"], stage["loss"]["temperature"]) == \
            (best["lr"], best["steps"], best["weight_decay"], best["temperature"])
        assert trained["history"][-1]["lr"] == pytest.approx(0.1 * best["lr"])  # its cosine schedule's last step
        assert trained["history"][0]["temperature"] == pytest.approx(best["temperature"], abs=0.01)
        assert f"stage {record['stage']}: best of 2 trials: lr {best['lr']:.3g}" in printed
    with pytest.raises(ConfigError, match=r"tune.lr = \[0.01, 0.001\]: expected 0 < low <= high"):
        load_train_config(None, tune={"lr": [0.01, 0.001]})


@pytest.mark.slow
def test_k_token_features_train_and_embed_end_to_end(ray_session, tmp_path):
    """K = 3 token vectors per item: stored as (K, D), trained through the Universal Projection over K tokens,
    and a raw input embedded through the artifact's encoders pooled to the same K."""
    from pipeline.store.features import FeatureStore
    from pipeline.store.files import read_json
    from pipeline.synthetic.concept_store import write_concept_store
    from pipeline.synthetic.corpus import concept_inputs

    store = str(tmp_path / "k3")
    write_concept_store(store, n=96, seed=0, tokens=3)
    assert FeatureStore(store, {}).run_record("image")["tokens"] == 3
    output = str(tmp_path / "m")
    run_train(load_train_config(None, epochs=2, features=store, output=output, stages="image:text,audio:text"))
    assert read_json(os.path.join(output, "config.json"))["model"]["tokens"] == {"image": 3, "text": 3, "audio": 3}
    model = load_model(output)
    sample = concept_inputs(0, np.random.default_rng(0))
    from pipeline.modality import Modality

    for name in ("image", "text", "audio"):
        vectors, _ = model.encode([sample[Modality.parse(name)]], name)
        assert vectors.shape == (1, 256) and abs(float(np.linalg.norm(vectors)) - 1) < 1e-5
        # the same as projecting the stored (K, D) features of that sample
        stored = {i: e for i, e in zip(read_features(store, name).column("id").to_pylist(), embeddings(read_features(store, name)))}
        np.testing.assert_allclose(vectors[0], model.project(stored["c00000"][None].astype(np.float32), name)[0], atol=2e-2)


def test_k_tokens_have_learned_positions_and_older_artifacts_load_as_they_were():
    """K > 1: the order of the K tokens matters once positions are learned (a tone's rhythm, a clip's motion);
    K = 1 has none; a state dict saved before positions existed loads with them at zero (its old behaviour)."""
    torch.manual_seed(0)
    config = ModelConfig(d=32, heads=4, ff=64, in_dims={"audio": 16, "text": 16}, tokens={"audio": 4, "text": 1})
    model = OneEncoder(config).eval()
    assert set(model.positions) == {"audio"} and model.positions["audio"].shape == (4, 32)
    x = torch.randn(2, 4, 16)
    reversed_order = x.flip(1)
    with torch.no_grad():
        torch.testing.assert_close(model("audio", x), model("audio", reversed_order))  # zero positions: order-blind
        model.positions["audio"].copy_(torch.randn(4, 32))
        assert not torch.allclose(model("audio", x), model("audio", reversed_order), atol=1e-4)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("positions.")}
    loaded = OneEncoder(ModelConfig(**{**config.__dict__, "in_dims": dict(config.in_dims), "tokens": dict(config.tokens)}))
    loaded.load_weights(old)
    assert torch.count_nonzero(loaded.positions["audio"]) == 0
    with pytest.raises(RuntimeError, match="Missing key"):
        loaded.load_weights({k: v for k, v in old.items() if not k.startswith("adapters.text")})
    from pipeline.train.curriculum import trainable_parts

    assert any(p is model.positions["audio"] for p in trainable_parts(model, 1, "audio", "text"))
