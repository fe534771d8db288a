"""Every job entrypoint runs through its real main()."""
from __future__ import annotations

import os


from jobs import train as train_job
from tests.settings import SMALL_EPOCHS, STAGES, VAL_FRACTION


def test_train_main_resumes_the_finished_run(trained, feature_store, tmp_path, capsys):
    import glob
    import shutil

    output = shutil.copytree(trained[0], str(tmp_path / "model"))  # the rerun rewrites it: the shared one stays as built
    result = trained[1]
    config = tmp_path / "train.yaml"  # the fixture's curriculum: its settings in the config file, stages as the flag
    config.write_text(f"val_fraction: {VAL_FRACTION}\n")
    argv = ["--features", feature_store, "--output", output, "--stages", STAGES, "--config", str(config),
            "--epochs", str(SMALL_EPOCHS)]  # as the fixture trained it: other epochs would be another run, retrained
    saved = {path: os.stat(path).st_mtime_ns for path in glob.glob(os.path.join(output, "stages", "*", "*"))}
    assert train_job.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"stage 3-video-text: {result['stages'][2]['epochs_run']} epochs" in printed
    assert len(saved) == 6 and {path: os.stat(path).st_mtime_ns for path in saved} == saved  # loaded, not retrained
    assert f"model artifact: {output}" in printed
    assert train_job.main(["--features", feature_store, "--output", str(tmp_path / "m"), "--stages", "image:smell"]) == 2
    assert "stages.0.anchor = 'smell': Value error, unknown modality 'smell'" in capsys.readouterr().err
    assert train_job.main(["--features", feature_store, "--output", str(tmp_path / "m"), "--stages", "image:depth"]) == 2
    assert "has no features for 'depth'" in capsys.readouterr().err


def test_embed_main_exits_1_while_a_modality_is_incomplete(tmp_path, monkeypatch, capsys):
    """`oneencoder embed` that ends with a modality's shards still missing (a crashed task, an earlier run cut
    short) exits 1, the summary marking that modality, so scripts and `submit` do not take it for done; a
    complete run exits 0."""
    import pipeline.embed.job as embed
    from jobs import embed as embed_job

    def summary(audio_features: int) -> dict:
        row = {"items": 12, "unique": 12, "errors": {"read": 0, "decode": 0, "encode": 0}, "encoder": "tiny",
               "tokens": 1, "dim": 32, "dtype": "float16", "shards_committed": 1}
        return {"input": "m.jsonl", "output": str(tmp_path / "out"), "items_this_run": 24, "elapsed_s": 1.0,
                "items_per_s": 24.0, "modalities": {
                    "text": {**row, "features": 12, "complete": True},
                    "audio": {**row, "features": audio_features, "complete": audio_features == 12}}}

    monkeypatch.setattr("pipeline.runtime.init_ray", lambda dashboard=True: None)
    argv = ["--input", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(embed, "run_embed", lambda cfg: summary(audio_features=8))
    assert embed_job.main(argv) == 1
    (audio,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("audio ")]
    assert audio.endswith("(incomplete: rerun to resume)"), audio
    monkeypatch.setattr(embed, "run_embed", lambda cfg: summary(audio_features=12))
    assert embed_job.main(argv) == 0
    assert "incomplete" not in capsys.readouterr().out
