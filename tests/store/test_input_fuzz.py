"""A seeded fuzz pass over tar headers and Parquet metadata: a few hundred mutated inputs, each of which must
end as a named error (ManifestError, at planning or at its read) or as rows, within a time and memory bound.

The cases run in one fresh interpreter (capped at 3 GB of address space) whose peak memory is measured."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.settings import ROOT
from tests.tar_factory import BLOCK, archive, member, pax

CASES = 300  # per format
SEED = 27


def base_tar() -> bytes:
    """A shard with the header kinds a real one has: ustar members, a GNU long name, a PAX header."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("s0.txt", b"a caption"), ("s0.png", b"\x89PNG\r\n\x1a\n" + bytes(300)),
                           ("d/" + "long" * 40 + ".txt", b"a long name")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue().rstrip(b"\0")
    body += bytes(-len(body) % BLOCK)
    return archive(body, pax({"path": "s2.txt", "mtime": "1.5"}), member("ignored.name", b"third"))


def _headers(data: bytes) -> list[int]:
    tar = tarfile.open(fileobj=io.BytesIO(data))
    offsets = [m.offset for m in tar.getmembers()]
    return sorted(set(offsets + [o + BLOCK for o in offsets if o + BLOCK < len(data) - 2 * BLOCK]))


def _fix_checksum(data: bytearray, at: int) -> None:
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = f"{sum(data[at:at + BLOCK]):06o}\0 ".encode()


def mutate_tar(base: bytes, rng: random.Random) -> bytes:
    data, heads = bytearray(base), _headers(base)
    at = rng.choice(heads)
    kind = rng.randrange(6)
    if kind == 0:  # a few bytes of a header, its checksum fixed (reaches the parser's deeper checks) or not
        for _ in range(rng.randint(1, 4)):
            data[at + rng.randrange(BLOCK)] = rng.randrange(256)
        if rng.random() < 0.7:
            _fix_checksum(data, at)
    elif kind == 1:  # the size field: huge, negative (base-256), garbage
        choice = rng.randrange(4)
        field = (f"{rng.randrange(1 << 33):011o}\0".encode() if choice == 0 else
                 b"\x80" + rng.randrange(1 << 80).to_bytes(11, "big") if choice == 1 else
                 b"\xff" + rng.randrange(1 << 80).to_bytes(11, "big") if choice == 2 else
                 bytes(rng.randrange(256) for _ in range(12)))
        data[at + 124:at + 136] = field
        _fix_checksum(data, at)
    elif kind == 2:  # the type flag
        data[at + 156] = rng.choice(b"0123456LKxXgSDMNV\0" + bytes([rng.randrange(256)]))
        if data[at + 156] == ord("S"):
            data[at + 482] = rng.choice((0, 1))  # an extended sparse map, maybe
        _fix_checksum(data, at)
    elif kind == 3:  # cut anywhere
        del data[rng.randrange(len(data)):]
    elif kind == 4:  # a PAX header with lying records
        records = rng.choice([{"size": str(rng.choice((-1, 1 << 40, 10**30)))}, {"size": "12x"},
                              {"GNU.sparse.major": "1", "GNU.sparse.realsize": str(1 << 40)},
                              {"path": "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")},
                              {"path": ""}])
        extended = bytearray(pax(records))
        if rng.random() < 0.5:  # its length prefix wrong
            body_at = BLOCK
            extended[body_at:body_at + 2] = str(rng.randrange(1, 99)).encode()[:2].ljust(2, b" ")
        data[at:at] = extended
    else:  # a name that is not UTF-8, or a key that is blank
        name = rng.choice([b"\xff\xfe.txt", b".txt", b" a.txt", b"a\nb.png", b"../../etc/passwd"])
        data[at:at + 100] = name.ljust(100, b"\0")
        _fix_checksum(data, at)
    return bytes(data)


def base_parquet() -> bytes:
    """A manifest of 64 rows in two row groups: ids, captions, another column, and media held in the file, every
    row naming one 4 MiB value through a dictionary (256 MiB once expanded, a few KB on disk)."""
    media = pa.DictionaryArray.from_arrays(pa.array(np.zeros(64, np.int32)), pa.array([bytes(4 << 20)], pa.binary()))
    table = pa.table({"id": [f"r{i}" for i in range(64)], "image": media,
                      "text": [f"caption {i}" for i in range(64)], "other": list(range(64))})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=32, compression="zstd")
    return buf.getvalue()


def mutate_parquet(base: bytes, rng: random.Random) -> bytes:
    data = bytearray(base)
    size = int.from_bytes(data[-8:-4], "little")
    meta = len(data) - 8 - size
    kind = rng.randrange(4)
    if kind == 0:  # bytes of the footer's metadata (row counts, offsets, sizes, types, encodings)
        for _ in range(rng.randint(1, 6)):
            data[meta + rng.randrange(size)] = rng.randrange(256)
    elif kind == 1:  # the footer's length
        data[-8:-4] = rng.randrange(1 << 32).to_bytes(4, "little")
    elif kind == 2:  # the pages themselves
        for _ in range(rng.randint(1, 6)):
            data[4 + rng.randrange(meta - 4)] = rng.randrange(256)
    else:  # cut
        del data[rng.randrange(len(data) - 8):len(data) - 8]
    return bytes(data)


def run_cases(folder: str, fmt: str, cases: int, seed: int) -> dict:
    """Each case planned and read; returns how they ended, the slowest case, and any unexpected exception."""
    from pipeline.store.errors import ManifestError
    from pipeline.store.manifest import plan_manifest, read_chunk

    rng = random.Random(seed)
    base = base_tar() if fmt == "tar" else base_parquet()
    ends: dict[str, int] = {}
    slowest, unexpected = (0.0, -1), []
    for case in range(cases):
        path = os.path.join(folder, f"case{case:04d}.{fmt}")
        with open(path, "wb") as fh:
            fh.write(mutate_tar(base, rng) if fmt == "tar" else mutate_parquet(base, rng))
        started = time.perf_counter()
        try:
            plan = plan_manifest(path, {}, shard_size=4)
            for chunk in plan.chunks:
                read_chunk(plan, chunk, {}, 1 << 20)
            end = "rows"
        except ManifestError:
            end = "named error"
        except Exception:
            end = "unexpected"
            unexpected.append(f"case {case}: {traceback.format_exc(limit=4)[-1500:]}")
        ends[end] = ends.get(end, 0) + 1
        slowest = max(slowest, (time.perf_counter() - started, case))
        os.remove(path)
    return {"ends": ends, "slowest_s": slowest[0], "slowest_case": slowest[1], "unexpected": unexpected[:5]}


def _fuzz(fmt: str, tmp_path) -> dict:
    script = (f"import json, resource, sys; sys.path.insert(0, {ROOT!r})\n"
              "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
              "def peak():\n"
              "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
              "from tests.store.test_input_fuzz import run_cases\n"
              "base = peak()\n"
              f"result = run_cases({str(tmp_path)!r}, {fmt!r}, {CASES}, {SEED})\n"
              "result['grew_mb'] = (peak() - base) / 1024\n"
              "print(json.dumps(result))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fmt", ["tar", "parquet"])  # mutated tar headers; mutated Parquet metadata
def test_mutated_inputs_end_as_named_errors_or_rows(fmt, tmp_path):
    result = _fuzz(fmt, tmp_path)
    assert result["unexpected"] == [], "\n".join(result["unexpected"])
    assert sum(result["ends"].values()) == CASES and result["ends"].get("named error", 0) > CASES // 4, result
    assert result["slowest_s"] < 2, result
    assert result["grew_mb"] < 200, result
