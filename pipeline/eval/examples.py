"""The retrieval-examples sheet: a few queries per modality pair and their nearest items, as a person looks at them.

``pick`` chooses, per pair and direction, QUERIES items both modalities hold (the model's held-out ids first: what
training did not see; fixed by id hash) and ranks every item of the other modality by cosine: the top TOP, each
marked when it is the query's partner (the same id), and the partner's rank. ``render`` draws one PNG per pair,
``examples/<a>-<b>.png``: a row per query, the query first, then its TOP hits with their scores, the partner framed
in green. Media are shown as a person would look at them (``preview``): images as they are, a video's middle frame,
an audio clip's spectrogram, a depth map in false colour, text as its words (read from the manifest the store was
embedded from). An item whose media cannot be shown (no URI, a remote or moved file, a decode error) is drawn as
its id and the reason.
"""
from __future__ import annotations

import logging
import os
import textwrap
from typing import Any, Callable

import numpy as np

from pipeline.store.pairs import id_fraction, is_validation

log = logging.getLogger(__name__)

QUERIES = 3  # per direction of each pair
TOP = 5
N_FFT, HOP = 512, 128  # spectrogram: 32 ms windows at 16 kHz


def pick(projected: dict[str, tuple[list[str], np.ndarray]], held_out: tuple[float, int] = (0.0, 0),
         queries: int = QUERIES, top: int = TOP) -> dict[str, list[dict[str, Any]]]:
    """``{"a->b": [{"query", "partner_rank", "hits": [{"id", "score", "partner"}]}]}`` for each pair of modalities
    in ``projected`` (ids, unit vectors), both directions; queries from ids both hold, held-out ones first."""
    out: dict[str, list[dict[str, Any]]] = {}
    names = sorted(projected)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(projected[a][0]) & set(projected[b][0])
            if not shared:
                continue
            fraction, seed = held_out
            order = sorted(shared, key=lambda x: (not (fraction and is_validation(x, fraction, seed)),
                                                  id_fraction(x, 5), x))
            for q, t in ((a, b), (b, a)):
                (qids, zq), (tids, zt) = projected[q], projected[t]
                qrow, trow = {x: n for n, x in enumerate(qids)}, {x: n for n, x in enumerate(tids)}
                rows = []
                for x in order[:queries]:
                    scores = np.asarray(zt, np.float32) @ np.asarray(zq[qrow[x]], np.float32)
                    best = np.lexsort((np.arange(len(scores)), -scores))[:top]
                    partner = scores[trow[x]]
                    rank = int((scores > partner).sum() + ((scores == partner) & (np.arange(len(scores)) < trow[x])).sum())
                    rows.append({"query": x, "partner_rank": rank + 1,
                                 "hits": [{"id": tids[j], "score": float(scores[j]), "partner": tids[j] == x}
                                          for j in best]})
                out[f"{q}->{t}"] = rows
    return out


def text_ids(examples: dict[str, list[dict[str, Any]]]) -> set[str]:
    """The ids whose text the sheet shows: text queries and text hits."""
    out: set[str] = set()
    for direction, rows in examples.items():
        q, t = direction.split("->")
        for row in rows:
            if q == "text":
                out.add(row["query"])
            if t == "text":
                out.update(h["id"] for h in row["hits"])
    return out


def spectrogram(wave: np.ndarray) -> np.ndarray:
    """Log power (dB, frequency bins × frames, low frequencies first) of a mono wave: Hann windows of N_FFT
    samples every HOP."""
    wave = np.asarray(wave, np.float32).ravel()
    if len(wave) < N_FFT:
        wave = np.pad(wave, (0, N_FFT - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1)) ** 2
    return (10 * np.log10(power + 1e-10)).T


def preview(modality: str, decoded: Any) -> tuple[str, Any]:
    """What a cell shows for a decoded item: ("text", str), ("image", HxWx3 uint8), ("map", 2-D floats: a
    spectrogram or a depth map)."""
    if isinstance(decoded, str):
        return "text", decoded
    array = np.asarray(decoded)
    if modality == "audio" or array.ndim == 1:
        return "map", spectrogram(array)
    if array.ndim == 4:  # video: frames, the middle one
        return "image", array[len(array) // 2]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):  # depth
        return "map", array.reshape(array.shape[:2])
    return "image", array


class MediaSource:
    """Each item's media, looked up by id: the store's URIs, decoded with the model's settings for its encoder; text
    from the manifest the store's text was embedded from."""

    def __init__(self, model: Any, features_uri: str, storage: dict[str, Any] | None = None):
        self.model, self.features_uri, self.storage = model, features_uri, storage or {}
        self._uris: dict[str, dict[str, str | None]] = {}
        self._texts: dict[str, str] | None = None
        self._shown: dict[tuple[str, str], tuple[str, Any]] = {}  # an item in several rows is decoded once

    def uris(self, modality: str) -> dict[str, str | None]:
        """id → uri of ``modality``'s committed shards: their id and uri columns alone (the evaluation has read and
        checked the whole shards already)."""
        if modality not in self._uris:
            import pyarrow.parquet as pq

            from pipeline.store.features import FeatureStore

            store = FeatureStore(self.features_uri, self.storage)
            found: dict[str, str | None] = {}
            for rel in store.committed_files(modality, "features"):
                table = pq.read_table(store._p(rel), columns=["id", "uri"], filesystem=store.fs)
                found.update(zip(table.column("id").to_pylist(), table.column("uri").to_pylist()))
            self._uris[modality] = found
        return self._uris[modality]

    def texts(self, wanted: set[str]) -> dict[str, str]:
        """The text of ``wanted`` ids from the text manifest (read once, chunk by chunk, until all are found)."""
        if self._texts is None:
            self._texts = {}
            try:
                self._texts = _manifest_texts(self.features_uri, self.storage, wanted)
            except Exception as e:  # a moved or remote manifest: the sheet shows ids instead
                log.info("examples sheet: text not shown (%s)", e)
        return self._texts

    def get(self, modality: str, item: str, wanted_texts: set[str]) -> tuple[str, Any]:
        """("text" | "image" | "map", what to draw), or ("missing", why)."""
        if (modality, item) not in self._shown:
            self._shown[modality, item] = self._get(modality, item, wanted_texts)
        return self._shown[modality, item]

    def _get(self, modality: str, item: str, wanted_texts: set[str]) -> tuple[str, Any]:
        from pipeline.media.decode import decode_item

        if modality == "text":
            text = self.texts(wanted_texts).get(item)
            return ("text", text) if text is not None else ("missing", "text not in the manifest")
        uri = self.uris(modality).get(item)
        if uri is None:
            return "missing", "no URI in the store"
        if uri.startswith(("http://", "https://")):
            return "missing", "remote URL (not fetched)"
        try:
            return preview(modality, decode_item(uri, self.model.decode_settings(modality, self.storage)))
        except Exception as e:  # DecodeError, OSError, a moved file: shown as the reason
            return "missing", str(e).splitlines()[0][:80]


def _manifest_texts(features_uri: str, storage: dict[str, Any], wanted: set[str]) -> dict[str, str]:
    from pipeline.store.features import FeatureStore
    from pipeline.store.manifest import plan_manifest, read_chunk

    run = FeatureStore(features_uri, storage).run_record("text") or {}
    if not run.get("manifest"):
        return {}
    plan = plan_manifest(run["manifest"], storage, int(run.get("shard_size", 256)))
    found: dict[str, str] = {}
    for chunk in plan.chunks:
        table = read_chunk(plan, chunk, storage)
        if "text" not in table.column_names:
            break
        for x, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
            if x in wanted and text is not None:
                found[x] = text
        if len(found) == len(wanted):
            break
    return found


def render(examples: dict[str, list[dict[str, Any]]], media: Callable[[str, str], tuple[str, Any]],
           output: str) -> list[str]:
    """One PNG per modality pair under ``output``/examples (both directions of the pair in it); returns the paths.
    ``media(modality, id)`` gives what a cell shows; each cell's kind is recorded in the examples (``shown``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = os.path.join(output, "examples")
    os.makedirs(folder, exist_ok=True)
    pairs: dict[str, list[str]] = {}
    for direction in examples:
        q, t = direction.split("->")
        pairs.setdefault("-".join(sorted((q, t))), []).append(direction)
    paths = []
    for pair, directions in pairs.items():
        rows = [(d, r) for d in directions for r in examples[d]]
        cols = 1 + max((len(r["hits"]) for _, r in rows), default=0)
        fig, axes = plt.subplots(len(rows), cols, figsize=(2.1 * cols, 2.3 * len(rows)), squeeze=False)
        for (direction, row), line in zip(rows, axes):
            q, t = direction.split("->")
            rank = row["partner_rank"]
            row["shown"] = _cell(line[0], *media(q, row["query"]),
                                 f"{q} query {row['query']}\npartner at rank {rank}", "tab:blue")
            for n, (ax, hit) in enumerate(zip(line[1:], row["hits"]), 1):
                title = f"{n}. {t} {hit['id']}\n{hit['score']:.3f}" + ("  ✓ partner" if hit["partner"] else "")
                hit["shown"] = _cell(ax, *media(t, hit["id"]), title, "tab:green" if hit["partner"] else None)
            for ax in line[1 + len(row["hits"]):]:
                ax.axis("off")
        fig.suptitle(f"{pair}: nearest {cols - 1} items per query (cosine; the query's partner framed in green)")
        height = 2.3 * len(rows)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 0.9 / height, wspace=0.06,
                            hspace=0.45)  # fixed margins: tight_layout measured every title (a second a sheet)
        path = os.path.join(folder, f"{pair}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _cell(ax: Any, kind: str, data: Any, title: str, frame: str | None) -> str:
    ax.set_xticks([])
    ax.set_yticks([])
    if kind == "image":
        ax.imshow(data)
    elif kind == "map":
        ax.imshow(data, origin="lower", aspect="auto", cmap="magma")
    else:
        ax.text(0.5, 0.5, textwrap.fill(str(data) if kind == "text" else f"({data})", 22)[:200],
                ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes,
                color="black" if kind == "text" else "grey")
    ax.set_title(title, fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame:
            spine.set_edgecolor(frame)
            spine.set_linewidth(4)
    return kind
