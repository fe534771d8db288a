"""`oneencoder submit` against a real two-node Ray cluster started on this machine with `ray start`."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import io
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobs.submit import NO_AGENT, entrypoint, runtime_env, submit
from pipeline.config import ConfigError
from tests.settings import ROOT


def _held_port() -> socket.socket:
    """A free port, bound on every address (not listening) by the socket returned, to hold until the server it is for
    has bound it: no other program can take it in between. That server must bind with SO_REUSEPORT, as gRPC's do by
    default (Ray's client server); a program without it gets EADDRINUSE."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("0.0.0.0", 0))
    return held


def _start_node(args: list[str], env: dict) -> str:
    """`ray start ARGS`: its output. Every port Ray can choose itself is left to it (0 or unset): a port picked here
    and let go could be taken by another program (the tests' own Ray, a concurrent suite's) before the node binds it."""
    proc = subprocess.run(["ray", "start", *args, "--dashboard-agent-listen-port=0"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _kill_cluster(*markers: str) -> None:
    """Stop every process of this cluster only, named by its nodes' temp dirs and its GCS address (`ray stop` would
    stop the tests' Ray too)."""
    from tests.processes import stop_ray_instance

    stop_ray_instance(*markers)


@pytest.fixture(scope="module")
def two_node_cluster():
    # Each node gets its own temp dir, as nodes on separate machines have: with one shared dir both nodes'
    # runtime-env agents unpack the job's working dir into the same folder, and a worker on the second node
    # lost its current directory under it (its first torch call then died with "Intel oneMKL FATAL ERROR:
    # Cannot load libtorch_cpu.so"). Short paths: Ray's socket paths must stay < 108 bytes.
    head_dir, second_dir = (tempfile.mkdtemp(prefix="oe2n-", dir="/tmp") for _ in range(2))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    gcs = None
    try:
        # GCS and dashboard on ports of Ray's choosing (0), read back from what it reports; the client server's port
        # cannot be 0 (Ray refuses it), so it is held here until the head has bound it
        with _held_port() as client:
            started = _start_node(["--head", "--port=0", "--dashboard-port=0", "--dashboard-host=127.0.0.1",
                                   f"--ray-client-server-port={client.getsockname()[1]}", "--num-cpus=1",
                                   "--disable-usage-stats", '--resources={"decode_node": 4}', f"--temp-dir={head_dir}"],
                                  env)
        with open(os.path.join(head_dir, "ray_current_cluster")) as fh:  # `ray start` records the GCS address there
            gcs = fh.read().strip()
        dashboard = re.search(r"RAY_API_SERVER_ADDRESS='(http://127\.0\.0\.1:\d+)'", started)
        assert dashboard, started[-3000:]
        _start_node([f"--address={gcs}", "--num-cpus=1", '--resources={"second_node": 4}', f"--temp-dir={second_dir}"],
                    env)
        yield dashboard.group(1)
    finally:
        _kill_cluster(second_dir, head_dir, *([gcs] if gcs else []))
        for folder in (second_dir, head_dir):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> str:
    """A copy of the project, as `oneencoder submit` uploads it (the working dir): a test's job configs go in there,
    never into the checkout."""
    from jobs.submit import EXCLUDES

    copy = str(tmp_path_factory.mktemp("submit") / "project")
    return shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*(e.split("/")[-1] for e in EXCLUDES), "tests"))


def _submit_embed(address: str, config_text: str, project: str) -> subprocess.CompletedProcess:
    """`oneencoder submit embed --config C` run from ``project`` (a copy of the checkout), C written in there."""
    config = os.path.join(project, "jobs", "configs", "embed_two_node_test.yaml")
    with open(config, "w") as fh:  # inside the project: it travels with the working dir
        fh.write(config_text)
    cmd = [sys.executable, "-m", "jobs.cli", "submit", "embed", "--address", address, "--config", config]
    return subprocess.run(cmd, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                          timeout=420, cwd=project)  # `python -m jobs.cli` there: the copy is what is uploaded


@pytest.mark.slow
def test_embed_job_submitted_to_a_two_node_cluster(two_node_cluster, project, sample_corpus, tmp_path):
    from ray.util.state import list_actors, list_nodes, list_tasks

    from pipeline.store.features import read_features

    # decode tasks on the head (decode_node), encoder actors on the second node (second_node). No model is built
    # beforehand: with an empty cache (this test run alone) the second node builds it
    place = ("decode: {num_cpus: 0.25, resources: {decode_node: 0.01}}\n"
             "encoders:\n  image: {num_cpus: 0.25, resources: {second_node: 1}, tokens: %d}\n")
    output = tmp_path / "features"
    proc = _submit_embed(two_node_cluster, f"input: {sample_corpus}\noutput: {output}\npreset: tiny\n"
                         "modalities: [image]\n" + place % 1, project)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "SUCCEEDED" in proc.stdout and f"-> {output}" in proc.stdout  # the job's own summary came through the log tail
    small = read_features(str(output), "image")
    assert sorted(small.column("id").to_pylist()) == [f"s{i:05d}" for i in range(12)]
    nodes = list_nodes(address=two_node_cluster)
    second = [n.node_id for n in nodes if "second_node" in (n.resources_total or {})]
    head = [n.node_id for n in nodes if "decode_node" in (n.resources_total or {})]
    assert len(nodes) == 2 and len(second) == 1 and len(head) == 1
    actors = list_actors(address=two_node_cluster, filters=[("node_id", "=", second[0])], limit=1000)
    assert any("MapWorker" in (a.class_name or "") for a in actors), [a.class_name for a in actors]
    decodes = [(t.name, t.node_id) for t in list_tasks(address=two_node_cluster, limit=10_000, detail=True)
               if "decode_work" in (t.name or "")]
    assert decodes and all(node == head[0] for _, node in decodes), decodes

    # 4x the rows (each image under 4 ids, embedded 4 times: dedupe off) and 4 tokens per item: 16x the feature
    # bytes; the driver receives commit records and markers only, so what reaches it barely grows
    corpus = os.path.dirname(sample_corpus)
    bigger = tmp_path / "bigger.jsonl"
    with open(sample_corpus) as src, open(bigger, "w") as dst:
        rows = [json.loads(line) for line in src]
        for copy in range(4):
            dst.writelines(json.dumps({"id": f"{r['id']}-{copy}", "image": os.path.join(corpus, r["image"])}) + "\n"
                           for r in rows)
    output_big = tmp_path / "features-big"
    proc = _submit_embed(two_node_cluster, f"input: {bigger}\noutput: {output_big}\npreset: tiny\n"
                         "modalities: [image]\ndedupe: false\n" + place % 4, project)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    big = read_features(str(output_big), "image")
    assert big.num_rows == 48 and big.column("embedding").nbytes >= 15 * small.column("embedding").nbytes
    received = [json.load(open(os.path.join(out, "summary.json")))["driver_received_bytes"]
                for out in (output, output_big)]
    assert 0 < received[1] < 1.5 * received[0], received
    assert received[1] < big.column("embedding").nbytes / 4, (received, big.column("embedding").nbytes)


class _FlakyHead:
    """A loopback proxy in front of a real cluster's job API: it answers the first ``failures`` job submissions
    (POST /api/jobs/) as a head whose job agent is not up yet does (500 and Ray's own text, from
    ray/dashboard/modules/job/job_head.py) and forwards every other request, unchanged, to the head."""

    def __init__(self, target: str, failures: int, text: str = NO_AGENT + ", please try again later."):
        self.posts = 0
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path.rstrip("/") == "/api/jobs":
                    flaky.posts += 1
                    if flaky.posts <= failures:
                        return self._reply(500, {"Content-Type": "text/plain"}, text.encode())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                request = urllib.request.Request(target + self.path, data=body if body else None, headers=headers,
                                                 method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        self._reply(r.status, dict(r.headers), r.read())
                except urllib.error.HTTPError as e:
                    self._reply(e.code, dict(e.headers), e.read())

            def _reply(self, status, headers, payload):
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_submit_waits_for_the_job_agent_of_a_cluster_just_started(two_node_cluster):
    """A head just started answers submissions with 500 "No available agent" until its job agent is up (seen
    once with `ray start` followed at once by a submit). The submit waits and tries again, under one
    submission id, so the job runs once; past agent_wait_s it says what is wrong."""
    from ray.job_submission import JobSubmissionClient

    real = JobSubmissionClient(two_node_cluster)
    flaky = _FlakyHead(two_node_cluster, failures=2)
    try:
        printed = io.StringIO()
        assert submit("embed", flaky.url, extra=["--help"], follow=False, out=printed, agent_wait_s=30) == 0
        assert flaky.posts == 3 and printed.getvalue().count("no job agent ready yet; submitting again") == 2
        job_id = printed.getvalue().split("submitted ", 1)[1].split(":", 1)[0]
        deadline = time.time() + 120
        while not real.get_job_status(job_id).is_terminal() and time.time() < deadline:
            time.sleep(0.5)
        assert real.get_job_status(job_id).value == "SUCCEEDED", real.get_job_logs(job_id)[-2000:]
        assert "usage:" in real.get_job_logs(job_id)  # the job's own --help ran on the cluster
        assert [j.submission_id for j in real.list_jobs()].count(job_id) == 1
    finally:
        flaky.close()

    never = _FlakyHead(two_node_cluster, failures=10_000)
    try:
        with pytest.raises(RuntimeError, match=rf"{never.url} had no job agent ready for 2 s .*ray status"):
            submit("embed", never.url, extra=["--help"], follow=False, out=io.StringIO(), agent_wait_s=2)
        assert 2 <= never.posts <= 3  # tried at 0 s and 1 s (the next wait, 2 s, would pass the deadline)
    finally:
        never.close()

    other = _FlakyHead(two_node_cluster, failures=10_000, text="Job with submission_id x already exists.")
    try:  # any other refusal is not retried; the command line prints it and exits 1
        from jobs.cli import main

        assert main(["submit", "embed", "--address", other.url, "--no-follow", "--", "--help"]) == 1
        assert other.posts == 1
    finally:
        other.close()


def test_submit_refuses_what_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown job 'nope'"):
        entrypoint("nope", None, [])
    with pytest.raises(ConfigError, match="outside the project folder"):
        entrypoint("embed", "/etc/hostname", [])
    assert entrypoint("train", os.path.join(ROOT, "jobs", "configs", "train_tiny.yaml"), ["--epochs", "2"]) == \
        "python -m jobs.train --config jobs/configs/train_tiny.yaml --epochs 2"
    env = runtime_env(env={"HF_HUB_OFFLINE": "1", "UNRELATED": "x"})
    assert env["working_dir"] == ROOT and ".git" in env["excludes"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and "UNRELATED" not in env["env_vars"]
    from jobs.cli import main

    assert main(["submit", "embed", "--address", "http://127.0.0.1:9", "--config", "/etc/hostname"]) == 2
    from jobs.cli import parse_command_line

    args = parse_command_line(["submit", "embed", "--address", "http://HEAD:8265", "--", "--input", "s3://b/m.jsonl"])
    assert (args.job, args.address, args.args) == ("embed", "http://HEAD:8265", ["--input", "s3://b/m.jsonl"])


def test_submit_runs_evaluate_and_tune_as_the_user_asked(monkeypatch):
    """What `oneencoder submit evaluate|tune --config F -- ARGS` has the cluster run: the job's own module with the
    config (relative to the uploaded working dir) and ARGS; run there, its main() gets the config the user meant
    (for tune: the training job with the search on)."""
    import importlib
    import shlex

    monkeypatch.chdir(ROOT)  # a submitted job starts in the uploaded project
    configs = os.path.join(ROOT, "jobs", "configs")
    evaluate = entrypoint("evaluate", os.path.join(configs, "evaluate_tiny.yaml"), ["--model", "models/m2", "--baseline"])
    assert evaluate == "python -m jobs.evaluate --config jobs/configs/evaluate_tiny.yaml --model models/m2 --baseline"
    tune = entrypoint("tune", os.path.join(configs, "train_tiny.yaml"), ["--trials", "3", "--features", "s3://b/f"])
    assert tune == "python -m jobs.train --tune --config jobs/configs/train_tiny.yaml --trials 3 --features s3://b/f"
    assert entrypoint("evaluate", None, ["--model", "m", "--features", "f"]) == "python -m jobs.evaluate --model m --features f"
    received = {}
    for module in ("jobs.evaluate", "jobs.train"):  # each job's run() gets the validated config instead of running it
        monkeypatch.setattr(f"{module}.run", lambda cfg, args, module=module: received.setdefault(module, cfg) and 0)
    for command in (evaluate, tune):
        python, flag, module, *argv = shlex.split(command)
        assert (python, flag) == ("python", "-m") and importlib.import_module(module).main(argv) == 0
    ev = received["jobs.evaluate"]
    assert (ev.model, ev.features, ev.baseline) == ("models/m2", "out/sample", True)  # the flag over the config's model
    tu = received["jobs.train"]
    assert tu.tune is not None and tu.tune.trials == 3 and tu.features == "s3://b/f"  # the search on, 3 trials
    assert [s.new for s in tu.stages] == ["image", "audio", "video"]  # the config's curriculum


def test_submit_failures_are_one_error_line(monkeypatch, capsys):
    """No job API at the address (nothing listening, or a server that is no Ray head): exit 2 and one `error:` line
    naming the address, no traceback; no address at all (no --address, no RAY_ADDRESS): the parser's usage error."""
    from http.server import SimpleHTTPRequestHandler

    from jobs.cli import main

    with _held_port() as held:  # bound, never listening: a connection there is refused
        closed = held.getsockname()[1]
        assert main(["submit", "embed", "--address", f"http://127.0.0.1:{closed}", "--", "--help"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot reach the Ray job API at http://127.0.0.1:{closed}: Failed to connect to Ray at address: "
        f"http://127.0.0.1:{closed}."]
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)  # a web server, not a Ray dashboard
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{web.server_address[1]}")  # the address when no --address
        assert main(["submit", "train"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: cannot reach the Ray job API at http://127.0.0.1:{web.server_address[1]}: "
                               "Version check returned 404"), line
    finally:
        web.shutdown()
        web.server_close()
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(SystemExit) as exited:
        main(["submit", "evaluate"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("usage: oneencoder")
    assert err.splitlines()[-1] == "oneencoder: error: submit needs --address http://HEAD:8265 (or RAY_ADDRESS)"


@pytest.mark.slow
def test_train_job_submitted_to_a_two_node_cluster_and_a_failed_job_exits_1(two_node_cluster, project, feature_store,
                                                                            tmp_path):
    """`oneencoder submit train -- ARGS` (small epochs) trains on the cluster and writes the artifact, the job's own
    report coming through the log tail; a job that fails there (no feature store at that path) makes submit exit 1,
    after the job's `error:` line and its status."""
    from pipeline.artifact import read_artifact

    def submit_train(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "jobs.cli", "submit", "train", "--address", two_node_cluster, "--", *args]
        return subprocess.run(cmd, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                              timeout=420, cwd=project)

    output = tmp_path / "model"
    proc = submit_train("--features", feature_store, "--output", str(output), "--stages", "image:text", "--epochs", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "SUCCEEDED" in proc.stdout and f"model artifact: {output}" in proc.stdout, proc.stdout[-4000:]
    artifact = read_artifact(str(output))
    assert artifact.modalities == ["image", "text"] and [s["epochs_run"] for s in artifact.stages] == [2]
    missing = tmp_path / "no-features"
    proc = submit_train("--features", str(missing), "--output", str(tmp_path / "m2"), "--stages", "image:text")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"error: feature store {missing}" in proc.stdout and "FAILED" in proc.stdout, proc.stdout[-4000:]
    assert not os.path.exists(tmp_path / "m2")
