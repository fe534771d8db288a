"""Variable-length token sequences in the feature store: padded tensors against Parquet lists, size and read speed.

    python -m benchmarks.store_layout [--items 500] [--scenarios text,image,audio] [--reads 3] [--report FILE]

For each scenario (a realistic length distribution of one encoder's tokens: CLIP text captions, ViT-B/16 patches,
wav2vec2 frames) it draws ``items`` sequences of L tokens (random normal float16 values, a seeded numpy RNG) and
writes them two ways, each as the feature store writes a shard (``pipeline.store.features.write_parquet``: zstd,
no dictionary for the vectors), beside the store's other columns (id, modality, uri, encoder):

- padded (the store's layout): ``embedding`` an ``arrow.fixed_shape_tensor`` of float16 [CAP, D], an item's L
  tokens then zero vectors up to CAP, and an int32 ``tokens`` column = L;
- list: ``embedding`` a ``list<fixed_size_list<float16, D>>`` of the L real tokens only, no padding.

Reading is timed to what every consumer (training, projection) takes, a padded (N, CAP, D) float16 array and the
lengths: the padded file through ``to_numpy_ndarray()``, the list file padded with numpy from its flattened values
and list offsets (one scatter, no loop per item); best of ``reads``, each a fresh ``pq.read_table`` (of a file in
the page cache: decoding, not the disk). The benchmark checks that both reads give the same array and lengths as
were written. It reports bytes on disk per item against the floor (the real tokens' raw float16 values, mean
L·D·2), write and read seconds, and the pooled layouts' sizes (``fixed_shape_tensor`` [K, D] for each of
``pooled``'s K): what an item costs stored as K pooled tokens against its whole sequence.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from benchmarks.common import REPORT_HELP, benchmark, cli, finish, split_ints
from pipeline.store.features import embeddings, features_table, write_parquet
from pipeline.config import StrictModel


def _caption_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """CLIP-tokenised captions (BOS and EOS included): about 16 tokens, rarely under 8 or over 40."""
    return np.clip(np.rint(rng.normal(16, 6, n)), 8, 40).astype(np.int32)


def _patch_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """ViT-B/16 at 224x224: 196 patches and the class token, every item."""
    return np.full(n, 197, np.int32)


def _frame_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """wav2vec2 at 50 frames/s, clips of 2-10 s: 100..500 frames, uniform."""
    return rng.integers(100, 501, n).astype(np.int32)


# scenario -> (label, D, CAP, lengths(n, rng))
SCENARIOS: dict[str, tuple[str, int, int, Callable[[int, np.random.Generator], np.ndarray]]] = {
    "text": ("text captions (CLIP text, D 512, CAP 77; L = normal(16, 6) clipped to 8..40)", 512, 77, _caption_lengths),
    "image": ("image ViT-B/16 (D 768, CAP 197; L = 197, no padding)", 768, 197, _patch_lengths),
    "audio": ("audio wav2vec2 frames (D 768, CAP 500; L uniform 100..500, 2-10 s at 50 frames/s)", 768, 500,
              _frame_lengths),
}
LAYOUTS = ("padded", "list", "padded_dictionary")  # the last: pyarrow's default writer options, for contrast


class BenchmarkStoreLayoutConfig(StrictModel):
    items: int = Field(500, ge=2, description="Items (token sequences) per scenario.")
    scenarios: list[str] = Field(list(SCENARIOS), min_length=1,
                                 description=f"Scenarios measured, of {', '.join(SCENARIOS)} (a list, or 'text,audio').")
    reads: int = Field(3, ge=1, description="Timed reads per layout, each a fresh pq.read_table; the best is reported.")
    pooled: list[int] = Field([1, 4], description="K of the pooled layouts also sized (fixed_shape_tensor [K, D]); "
                              "[] = none.")
    seed: int = Field(0, description="Random seed (lengths and values).")
    workdir: str | None = Field(None, description="Scratch folder for the Parquet files; null = a new temp folder "
                                "(removed after).")
    report: str | None = Field(None, description=REPORT_HELP)

    @field_validator("scenarios", mode="before")
    @classmethod
    def _scenarios(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [v for v in value if v not in SCENARIOS] if isinstance(value, list) else []
        if unknown:
            raise ValueError(f"{', '.join(map(str, unknown))}: expected some of {', '.join(SCENARIOS)}")
        return value

    @field_validator("pooled", mode="before")
    @classmethod
    def _pooled(cls, value: Any) -> Any:
        value = split_ints(value, "1,4")
        if isinstance(value, list) and any(not isinstance(k, int) or k < 1 for k in value):
            raise ValueError(f"pooled = {value}: expected token counts of at least 1")
        return value


JOB = benchmark("store_layout", "variable-length tokens in Parquet: padded fixed_shape_tensor vs list<float16[D]>, "
                "size and read speed", "benchmarks.store_layout:BenchmarkStoreLayoutConfig")


def draw(n: int, dim: int, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The real tokens of ``n`` items, item after item: (sum(lengths), D) float16, random normal."""
    total = int(lengths.sum()) * dim
    values = np.empty(total, np.float16)
    step = 1 << 24
    for start in range(0, total, step):  # in pieces: never all of them as float32 at once
        stop = min(total, start + step)
        values[start:stop] = rng.standard_normal(stop - start, dtype=np.float32)
    return values.reshape(-1, dim)


def pad(tokens: np.ndarray, lengths: np.ndarray, cap: int) -> np.ndarray:
    """(N, CAP, D) float16: each item's tokens (``tokens`` holds them item after item), then zero vectors."""
    out = np.zeros((len(lengths), cap, tokens.shape[1]), np.float16)
    out[np.arange(cap) < lengths[:, None]] = tokens  # the mask's True cells in row order: item after item
    return out


def tensor_table(padded: np.ndarray, sequence: bool = False) -> pa.Table:
    """``padded`` (N, K, D) float16 as the store writes a shard (``features_table``): id, modality, uri, encoder, the
    ``embedding`` tensor [K, D] (K = CAP, or a pooled K) and, for a ``sequence``, the ``tokens`` column."""
    n, k, dim = padded.shape
    flat = pa.FixedSizeListArray.from_arrays(pa.array(padded.reshape(-1)), k * dim)
    return features_table([f"item-{i:09d}" for i in range(n)], "text", [None] * n, "bench", flat, k, dim, sequence)


def padded_table(tokens: np.ndarray, lengths: np.ndarray, cap: int) -> pa.Table:
    """The padded layout, the store's: its columns, embedding [CAP, D] (zero vectors after L), tokens = L (int32)."""
    return tensor_table(pad(tokens, lengths, cap), sequence=True)


def list_table(tokens: np.ndarray, lengths: np.ndarray) -> pa.Table:
    """The list layout: the store's other columns, and embedding list<fixed_size_list<float16, D>> of the L real
    tokens only."""
    dim = tokens.shape[1]
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), dim)
    embedding = pa.ListArray.from_arrays(pa.array(offsets), vectors)
    store = tensor_table(np.zeros((len(lengths), 1, 1), np.float16)).drop_columns(["embedding"])
    return store.append_column("embedding", embedding)


def padded_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """A padded table as the store reads it (``embeddings``): (N, CAP, D) float16 and the lengths."""
    return embeddings(table), table.column("tokens").to_numpy()


def list_arrays(table: pa.Table, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """A list table padded to (N, CAP, D) float16 (as every consumer takes it) and the lengths, from its flattened
    values and list offsets."""
    column = table.column("embedding").combine_chunks()
    lengths = np.diff(column.offsets.to_numpy()).astype(np.int32)
    dim = column.type.value_type.list_size
    values = column.flatten().flatten().to_numpy().reshape(-1, dim)  # the slice's own values, item after item
    return pad(values, lengths, cap), lengths


def read_padded(path: str) -> tuple[np.ndarray, np.ndarray]:
    return padded_arrays(pq.read_table(path))


def read_list(path: str, cap: int) -> tuple[np.ndarray, np.ndarray]:
    return list_arrays(pq.read_table(path), cap)


def _best_read(path: str, convert: Callable[[pa.Table], Any], times: int) -> tuple[float, float, Any]:
    """The fastest of ``times`` reads of ``path`` (a fresh ``pq.read_table``, then ``convert``): its seconds in all
    and in ``pq.read_table`` alone, and the last read's arrays."""
    best, decode, out = float("inf"), 0.0, None
    for _ in range(times):
        out = None  # the previous arrays freed before the next read
        t = time.perf_counter()
        table = pq.read_table(path)
        read = time.perf_counter()
        out = convert(table)
        done = time.perf_counter()
        del table
        if done - t < best:
            best, decode = done - t, read - t
    return best, decode, out


def _write(table: pa.Table, path: str, store: bool = True) -> float:
    """Write ``table`` as the feature store writes a shard (``write_parquet``), or with pyarrow's default options
    (zstd, every column dictionary-encoded); return the seconds it took."""
    t = time.perf_counter()
    if store:
        write_parquet(table, path)
    else:
        pq.write_table(table, path, compression="zstd")
    return time.perf_counter() - t


def measure(name: str, cfg: BenchmarkStoreLayoutConfig, folder: str, rng: np.random.Generator) -> dict[str, Any]:
    """One scenario: both layouts written, sized and read back (checked equal), and the pooled layouts sized."""
    label, dim, cap, sample = SCENARIOS[name]
    n = cfg.items
    lengths = sample(n, rng)
    tokens = draw(n, dim, lengths, rng)
    floor = float(lengths.mean()) * dim * 2
    layouts: dict[str, dict[str, Any]] = {}
    answers = {}
    for layout in LAYOUTS:
        table = list_table(tokens, lengths) if layout == "list" else padded_table(tokens, lengths, cap)
        path = os.path.join(folder, f"{name}-{layout}.parquet")
        write_s = _write(table, path, store=layout != "padded_dictionary")
        del table
        size = os.path.getsize(path)
        convert = (lambda table: list_arrays(table, cap)) if layout == "list" else padded_arrays
        read_s, parquet_s, answers[layout] = _best_read(path, convert, cfg.reads)
        layouts[layout] = {"bytes_per_item": size / n, "vs_floor": size / n / floor, "write_s": write_s,
                           "read_s": read_s, "read_table_s": parquet_s, "read_items_per_s": n / read_s}
        print(f"{name} {layout}: {size / n:,.0f} bytes/item on disk, written in {write_s:.2f} s, "
              f"read in {read_s:.3f} s ({parquet_s:.3f} s of it in pq.read_table)", flush=True)
    for layout, (array, got) in answers.items():  # both reads give back what was written
        if not (np.array_equal(got, lengths) and array.shape == (n, cap, dim)
                and np.array_equal(array[np.arange(cap) < lengths[:, None]], tokens)
                and not array[np.arange(cap) >= lengths[:, None]].any()):
            raise AssertionError(f"{name}: the {layout} read is not what was written")
    del answers
    pooled = {}
    for k in cfg.pooled:
        path = os.path.join(folder, f"{name}-pooled{k}.parquet")
        vectors = rng.standard_normal((n, k, dim), dtype=np.float32).astype(np.float16)
        _write(tensor_table(vectors), path)
        pooled[str(k)] = {"raw_bytes_per_item": k * dim * 2, "bytes_per_item": os.path.getsize(path) / n}
        os.remove(path)
    for layout in LAYOUTS:
        os.remove(os.path.join(folder, f"{name}-{layout}.parquet"))
    p, q = layouts["padded"], layouts["list"]
    return {"label": label, "dim": dim, "cap": cap,
            "lengths": {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())},
            "floor_bytes_per_item": floor, "padded_memory_bytes_per_item": cap * dim * 2,
            "layouts": layouts, "pooled": pooled,
            "ratios": {"size": p["bytes_per_item"] / q["bytes_per_item"], "read": p["read_s"] / q["read_s"],
                       "dictionary_read": layouts["padded_dictionary"]["read_s"] / p["read_s"]}}


def run(cfg: BenchmarkStoreLayoutConfig, args: object = None) -> int:
    rng = np.random.default_rng(cfg.seed)
    scratch = None if cfg.workdir else tempfile.TemporaryDirectory(prefix="oneencoder-store-layout-")
    folder = cfg.workdir or scratch.name
    os.makedirs(folder, exist_ok=True)
    try:
        scenarios = {name: measure(name, cfg, folder, rng) for name in cfg.scenarios}
    finally:
        if scratch is not None:
            scratch.cleanup()
    result = {"items": cfg.items, "reads": cfg.reads, "cores": os.cpu_count(), "pyarrow": pa.__version__,
              "scenarios": scenarios}
    return finish("store_layout", cfg, result, format_store_layout)


def format_store_layout(r: dict[str, Any]) -> str:
    lines = [f"{r['items']:,} items per scenario, float16, Parquet zstd (as the store writes a shard); read = "
             f"pq.read_table to a padded (N, CAP, D) array and the lengths, best of {r['reads']} "
             f"(pyarrow {r['pyarrow']}, {r['cores']} cores, files in the page cache)"]
    for name, s in r["scenarios"].items():
        m = s["lengths"]
        lines += ["", f"{name}: {s['label']}",
                  f"tokens per item: mean {m['mean']:.1f} (min {m['min']}, max {m['max']}) of {s['cap']}; in memory "
                  f"padded {s['padded_memory_bytes_per_item']:,} bytes/item, real tokens {s['floor_bytes_per_item']:,.0f} "
                  f"(x{s['padded_memory_bytes_per_item'] / s['floor_bytes_per_item']:.2f})",
                  "| layout | bytes/item on disk | x floor | write s | read s (pq.read_table) | read items/s |",
                  "|---|---|---|---|---|---|",
                  f"| floor: real tokens' raw float16 (mean L·D·2) | {s['floor_bytes_per_item']:,.0f} | 1.00 | - | - | - |"]
        for layout, x in s["layouts"].items():
            what = {"padded": f"padded fixed_shape_tensor [{s['cap']}, {s['dim']}] + tokens",
                    "list": f"list<float16[{s['dim']}]>",
                    "padded_dictionary": "padded, pyarrow's default options (float16 dictionary-encoded)"}[layout]
            lines.append(f"| {what} | {x['bytes_per_item']:,.0f} | {x['vs_floor']:.2f} | {x['write_s']:.2f} | "
                         f"{x['read_s']:.3f} ({x['read_table_s']:.3f}) | {x['read_items_per_s']:,.0f} |")
        for k, x in s["pooled"].items():
            lines.append(f"| pooled fixed_shape_tensor [{k}, {s['dim']}] (raw {x['raw_bytes_per_item']:,}) | "
                         f"{x['bytes_per_item']:,.0f} | {x['bytes_per_item'] / s['floor_bytes_per_item']:.3f} | - | - | - |")
        lines.append(f"padded/list: size x{s['ratios']['size']:.2f}, read time x{s['ratios']['read']:.2f}; "
                     f"dictionary-encoded/store's padded read time x{s['ratios']['dictionary_read']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.store_layout``: exit 2 with one `error:` line for a bad config."""
    return cli(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
