"""Resume: a killed driver, Ctrl-C or a killed worker never loses or duplicates a row."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.embed.config import EmbedConfig
from pipeline.embed.job import run_embed
from pipeline.embed.resume import ResumeMismatchError
from pipeline.media.ffmpeg import find_ffmpeg
from pipeline.modality import Modality
from pipeline.store.features import FeatureStore, read_errors, read_features
from tests.processes import encoder_actor_pids

AUDIO_FORMATS = Modality("audio").spec.synthetic.formats

ITEMS = 20


@pytest.fixture(scope="module")
def slow_audio(session_dir, sample_corpus, tmp_path_factory):
    """20 audio items (20 files) and an ffmpeg that takes 0.2 s a call and, while a test holds it closed, runs
    only for items it was handed a ticket for."""
    folder = tmp_path_factory.mktemp("slow")
    corpus = os.path.dirname(sample_corpus)
    manifest = folder / "manifest.jsonl"
    with open(manifest, "w") as fh:
        for i in range(ITEMS):
            sample = i % 12  # the corpus cycles audio formats by sample index
            source = os.path.join(corpus, "audio", f"{sample:05d}.{AUDIO_FORMATS[sample % len(AUDIO_FORMATS)]}")
            path = folder / f"a{i}{os.path.splitext(source)[1]}"  # a file per item: nothing is deduplicated
            shutil.copy(source, path)
            fh.write(json.dumps({"id": f"a{i}", "audio": str(path)}) + "\n")
    wrapper = folder / "slow-ffmpeg"
    # open unless a test removes the flag; closed, a call for item aN runs once tickets/aN exists (handed out by
    # interrupt_after_more_commits): a ticket per item, so an item's probe and decode cannot be split between
    # items and leave every decode waiting
    (folder / "open").touch()
    (folder / "tickets").mkdir()
    wrapper.write_text(f"""#!/bin/sh
item=""
for arg in "$@"; do
  case "$arg" in *{folder}/a*) item=$(basename "$arg"); item=${{item%.*}};; esac
done
while [ ! -e {folder}/open ] && [ ! -e "{folder}/tickets/$item" ]; do
  sleep 0.05
done
sleep 0.2
exec {find_ffmpeg()} "$@"
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    config = folder / "slow.yaml"
    # the encoder actor takes half a CPU: decode tasks waiting for tickets hold the other CPU and a half, and an
    # actor asking for a whole one waited until they gave up (a minute per interrupted run)
    config.write_text(f"ffmpeg: {wrapper}\nshard_size: 2\ndecode: {{batch_size: 1}}\nactor_batch_rows: 2\n"
                      "encoders:\n  audio: {batch_size: 2, dtype: float32, num_cpus: 0.5}\n")
    return str(manifest), str(config)


def embed_cmd(manifest, config, out):
    return [sys.executable, "-m", "jobs.embed", "--input", manifest, "--output", out, "--config", config]


def markers(out):
    folder = os.path.join(out, "_progress", "audio")
    return sorted(n for n in os.listdir(folder) if n.startswith("shard-")) if os.path.isdir(folder) else []


def assert_complete_without_duplicates(out):
    ids = read_features(out, "audio").column("id").to_pylist() + read_errors(out).column("id").to_pylist()
    assert sorted(ids) == sorted(f"a{i}" for i in range(ITEMS))


def shard_mtimes(out):
    """Modification times of the files of committed shards (a killed commit may leave files without a marker:
    those are redone)."""
    store = FeatureStore(out, {})
    return {f: os.stat(os.path.join(out, f)).st_mtime_ns for kind in ("features", "errors")
            for f in store.committed_files("audio", kind)}


def interrupt_after_more_commits(cmd, env, sig, done_before: int, folder: Path) -> tuple[int, str]:
    """Start the job, send ``sig`` once it has committed a shard beyond ``done_before``; its exit code and log.

    Decodes are rationed (a ticket per item): only the first uncommitted items, two shards' worth beyond those
    committed this run, may be decoded, so however long the encoder actor takes to start, the run cannot
    finish in one burst before the signal."""
    (folder / "open").unlink()
    for ticket in (folder / "tickets").iterdir():
        ticket.unlink()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = cmd[cmd.index("--output") + 1]
    deadline = time.time() + 240
    try:
        while len(markers(out)) <= done_before and proc.poll() is None and time.time() < deadline:
            committed = {int("".join(filter(str.isdigit, name))) for name in markers(out)}
            waiting = [i for i in range(ITEMS) if i // 2 not in committed]  # shard_size 2
            for i in waiting[:4 + 2 * (len(committed) - done_before)]:
                (folder / "tickets" / f"a{i}").touch()
            time.sleep(0.05)
        proc.send_signal(sig)
        log = proc.communicate(timeout=120)[0]
    finally:
        (folder / "open").touch()
    return proc.returncode, log


@pytest.mark.slow
def test_interrupted_job_resumes_without_redoing_or_duplicating(ray_session, slow_audio, tmp_path):
    """Ctrl-C, then SIGKILL on the rerun, then a rerun to the end: each run keeps what the last committed."""
    manifest, config = slow_audio
    out = str(tmp_path / "out")
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    done_before = 0
    for sig in (signal.SIGINT, signal.SIGKILL):
        code, log = interrupt_after_more_commits(embed_cmd(manifest, config, out), env, sig, done_before,
                                                 Path(manifest).parent)
        assert code != 0, log
        done = markers(out)
        assert done_before < len(done) < ITEMS // 2, (signal.Signals(sig).name, log)
        if done_before:
            assert f"{done_before} shards already committed" in log  # the rerun resumed, then was killed
        done_before = len(done)
    before = shard_mtimes(out)
    rerun = subprocess.run(embed_cmd(manifest, config, out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{done_before} shards already committed" in rerun.stderr
    assert_complete_without_duplicates(out)
    after = shard_mtimes(out)
    assert all(after[name] == mtime for name, mtime in before.items()), "committed shards were rewritten"
    assert not [n for r, _, fs in os.walk(out) for n in fs if n.startswith(".tmp-")]


@pytest.mark.slow
def test_killed_encoder_worker_is_survived(ray_session, slow_audio, tmp_path):
    manifest, config_path = slow_audio
    out = str(tmp_path / "out")
    from pipeline.embed.config import load_embed_config

    cfg = load_embed_config(config_path, input=manifest, output=out)
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_embed(cfg)))
    thread.start()
    deadline = time.time() + 240
    while not (markers(out) and encoder_actor_pids()) and time.time() < deadline:
        time.sleep(0.05)
    victims = encoder_actor_pids()
    assert victims, "no encoder actor process found"
    assert len(markers(out)) < ITEMS // 2, "the run ended before the worker could be killed"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert result["summary"]["modalities"]["audio"]["complete"]
    assert not set(victims) & set(encoder_actor_pids())  # the rows after the kill came from a new actor
    assert_complete_without_duplicates(out)


@pytest.mark.slow
def test_changed_settings_refuse_to_mix_and_overwrite_starts_over(ray_session, sample_corpus, tmp_path):
    out = str(tmp_path / "out")
    base = dict(input=sample_corpus, output=out, modalities=["text"], shard_size=4)
    run_embed(EmbedConfig(**base))
    with pytest.raises(ResumeMismatchError, match="tokens: was 1, now 3.*--overwrite"):
        run_embed(EmbedConfig(**base, encoders={"text": {"tokens": 3}}))
    summary = run_embed(EmbedConfig(**base, encoders={"text": {"tokens": 3}}, overwrite=True))
    assert summary["items_this_run"] == 12 and summary["modalities"]["text"]["tokens"] == 3
    assert read_features(out, "text").schema.field("embedding").type.shape == [3, 32]
