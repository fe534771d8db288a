"""The benchmark's CPU accounting per process (benchmarks.cpu_trace): names, windows, a real busy process."""
import os
import subprocess
import sys

import pytest

from benchmarks.cpu_trace import CpuTrace, format_windows, process_label


def test_process_labels_drop_the_call_and_keep_the_actor():
    assert process_label(-1, "python", ["ray::MapWorker(MapBatches(EncodeActor)).submit", ""]) == \
        "ray::MapWorker(MapBatches(EncodeActor))"
    assert process_label(-1, "python", ["ray::_CommitActor.commit"]) == "ray::_CommitActor"
    assert process_label(-1, "python", ["ray::MapBatches(read_work)"]) == "ray::MapBatches(read_work)"
    assert process_label(-1, "python", ["ray::IDLE", ""]) == "ray::IDLE"
    assert process_label(-1, "python3", ["/usr/bin/python3", "-u", "/x/log_monitor.py", "--flag"]) == "log_monitor.py"
    assert process_label(-1, "raylet", ["/x/raylet", "--node"]) == "raylet"
    assert process_label(os.getpid(), "python", ["python"]) == "driver (this process)"


def test_a_worker_counts_as_what_it_became_and_idle_is_what_nobody_used():
    trace = CpuTrace()
    trace.samples = [(0.0, {7: ("ray::IDLE", 0.0), 8: ("raylet", 1.0), 9: ("ray::Decode", 0.0)}),
                     (1.0, {7: ("ray::IDLE", 0.75), 8: ("raylet", 1.25), 9: ("ray::Decode", 0.5),  # imports while IDLE
                            10: ("ray::Decode", 0.25)}),
                     (2.0, {7: ("ray::Encoder", 1.75), 8: ("raylet", 1.25), 10: ("ray::Decode", 0.5)})]  # 9 ended
    first, second = trace.windows([0.0, 1.0, 2.0], cores=2)
    assert first == {"from_s": 0.0, "to_s": 1.0, "idle_s": 0.25, "counts": {"ray::Encoder": 1, "raylet": 1, "ray::Decode": 2},
                     "processes": {"ray::Encoder": 0.75, "ray::Decode": 0.75, "raylet": 0.25}}
    assert second["processes"] == {"ray::Encoder": 1.0, "ray::Decode": 0.25} and second["idle_s"] == 0.75
    assert format_windows([first], top=2) == ["    0-1 s: idle 0.2 | ray::Encoder 0.8 | ray::Decode x2 0.8 | 1 others 0.2"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads Linux /proc")
def test_a_busy_process_is_found_under_its_script(tmp_path):
    script = tmp_path / "spin_for_trace.py"
    script.write_text("import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end:\n    pass\n")
    with CpuTrace(interval=0.1) as trace:
        subprocess.run([sys.executable, str(script)], check=True)
    (window,) = trace.windows([0.0, trace.samples[-1][0]])
    assert 0.8 <= window["processes"]["spin_for_trace.py"] <= 1.5
    assert window["idle_s"] <= (os.cpu_count() or 1) * window["to_s"]
