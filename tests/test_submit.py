"""`oneencoder submit` against a real two-node Ray cluster started on this machine with `ray start`."""
from __future__ import annotations

import json
import os
import shutil
import signal
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open together while they are picked, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_args(temp_dir: str, ports: list[int]) -> list[str]:
    """Every port a node opens (6 free ones), so this cluster never collides with the tests' own Ray."""
    agent, grpc, metrics, runtime_env_port, manager, objects = ports
    return [f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env_port}",
            f"--node-manager-port={manager}", f"--object-manager-port={objects}"]


def _cluster_pids(temp_dir: str, gcs_port: int) -> set[int]:
    """This cluster's processes: those naming its temp dir or GCS address, and all their descendants
    (agents rename their command line, e.g. ray::DashboardAgent, so they are found through their parent)."""
    marks = (temp_dir.encode(), f":{gcs_port}".encode())
    parents, found = {}, set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
            with open(f"/proc/{pid}/stat") as fh:
                parents[int(pid)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(m in cmd for m in marks):
            found.add(int(pid))
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found - {os.getpid()}


def _kill_cluster(temp_dir: str, gcs_port: int) -> None:
    """Stop every process of this cluster only (`ray stop` would stop the tests' Ray too)."""
    pids = _cluster_pids(temp_dir, gcs_port)  # collected before anything dies and orphans its children
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids | _cluster_pids(temp_dir, gcs_port):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@pytest.fixture(scope="module")
def two_node_cluster():
    # Each node gets its own temp dir, as nodes on separate machines have: with one shared dir both nodes'
    # runtime-env agents unpack the job's working dir into the same folder, and a worker on the second node
    # lost its current directory under it (its first torch call then died with "Intel oneMKL FATAL ERROR:
    # Cannot load libtorch_cpu.so"). Short paths: Ray's socket paths must stay < 108 bytes.
    head_dir, second_dir = (tempfile.mkdtemp(prefix="oe2n-", dir="/tmp") for _ in range(2))
    # one draw for every port of both nodes: separate draws can hand out a port again (the head once got
    # --port and --node-manager-port the same and failed to start)
    gcs, dashboard, client, *nodes = _ports(15)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(["ray", "start", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}",
                        "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}", "--num-cpus=1",
                        "--disable-usage-stats", '--resources={"decode_node": 4}', *_node_args(head_dir, nodes[:6])], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", '--resources={"second_node": 4}',
                        *_node_args(second_dir, nodes[6:])], env=env, check=True, capture_output=True, timeout=120)
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        for folder in (second_dir, head_dir):
            _kill_cluster(folder, gcs)
            shutil.rmtree(folder, ignore_errors=True)


def _submit_embed(address: str, config_text: str) -> subprocess.CompletedProcess:
    config = os.path.join(ROOT, "jobs", "configs", "embed_two_node_test.yaml")
    with open(config, "w") as fh:  # inside the project: it travels with the working dir
        fh.write(config_text)
    try:
        cmd = [sys.executable, "-m", "jobs.cli", "submit", "embed", "--address", address, "--config", config]
        return subprocess.run(cmd, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                              timeout=420, cwd=ROOT)
    finally:
        os.remove(config)


def test_embed_job_submitted_to_a_two_node_cluster(two_node_cluster, sample_corpus, tmp_path):
    from ray.util.state import list_actors, list_nodes, list_tasks

    from pipeline.store.features import read_features

    # decode tasks on the head (decode_node), encoder actors on the second node (second_node). No model is built
    # beforehand: with an empty cache (this test run alone) the second node builds it
    place = ("decode: {num_cpus: 0.25, resources: {decode_node: 0.01}}\n"
             "encoders:\n  image: {num_cpus: 0.25, resources: {second_node: 1}, tokens: %d}\n")
    output = tmp_path / "features"
    proc = _submit_embed(two_node_cluster, f"input: {sample_corpus}\noutput: {output}\npreset: tiny\n"
                         "modalities: [image]\n" + place % 1)
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
                         "modalities: [image]\ndedupe: false\n" + place % 4)
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
