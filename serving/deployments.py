"""Ray Serve deployments: one batched encoder per modality, the media decoder feeding them, and the search index of a
served feature store."""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any

from ray import serve

from serving.config import DECODER, BatchSettings, ServeArgs, batch_settings

log = logging.getLogger("serving")
HEALTH_TTL_S = 10.0  # a readiness probe reuses a warm-up check younger than this (probes come every few seconds)


def record(results: list[Any], timings: dict[str, float], modality: str, model: str) -> None:
    """One batch's results in this replica's metrics: items, errors by stage, batch size, decode and encode time."""
    from pipeline.item_encoder import ItemError
    from serving.metrics import server_metrics

    metrics, tags = server_metrics(), {"modality": modality, "model": model}
    errors = collections.Counter(r.stage for r in results if isinstance(r, ItemError))
    metrics.inc("oneencoder_items", len(results) - sum(errors.values()), **tags)
    for stage, count in errors.items():
        metrics.inc("oneencoder_item_errors", count, stage=stage, **tags)
    metrics.observe("oneencoder_batch_size", len(results), **tags)
    for stage in ("decode", "encode"):  # (the encoders of decoded arrays time no decode: the MediaDecoder does)
        if stage in timings:
            metrics.observe(f"oneencoder_{stage}_seconds", timings[stage], **tags)


def tighter_limits(limits: list[dict[str, float] | None], own: Any) -> list[dict[str, float] | None]:
    """Per item, its request's limits (``serving.budget.request_budget``) capped at this replica's ``own``: an item's
    limits can be tighter than the server's, never looser."""
    return [{k: min(v, getattr(own, k)) for k, v in (lim or {}).items()} or None for lim in limits]


def answer(result: Any) -> dict[str, Any]:
    """An ``Encoded`` or ``ItemError`` as the Gateway reads it: {"embedding", "input_tokens"} or {"error"}."""
    from pipeline.item_encoder import ItemError

    if isinstance(result, ItemError):
        return {"error": result.reason}
    return {"embedding": result.vector, "input_tokens": result.input_tokens}


def decoder_warm_up(settings: Any) -> dict[str, Any]:
    """A generated sample file of the settings' modality (its first format: a PNG, a WAV, an MP4...), written and
    decoded from its bytes as a request's item is: {"ok", "ms", "reason"}; ok without a try for a modality that
    generates no samples."""
    import tempfile

    import numpy as np

    from pipeline.item_encoder import ItemError, decode_raw
    from pipeline.synthetic.draw import Scene

    synthetic = settings.modality.spec.synthetic
    if synthetic is None:
        return {"ok": True, "ms": None, "reason": None}
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="oneencoder-decoder-") as folder:
            path = os.path.join(folder, os.path.basename(synthetic.file_name(0)))
            synthetic.write(Scene("red", "circle"), np.random.default_rng(0), path)
            with open(path, "rb") as fh:
                decode_raw(fh.read(), settings)
    except ItemError as e:
        return {"ok": False, "ms": None, "reason": f"{settings.modality}: {e.reason}"}
    except Exception as e:  # writing the sample failed (no ffmpeg to encode it, a full disk): cannot tell
        return {"ok": False, "ms": None, "reason": f"{settings.modality}: {type(e).__name__}: {str(e)[:300]}"}
    return {"ok": True, "ms": round(1000 * (time.perf_counter() - started), 1), "reason": None}


def warm_up_item(modality: str) -> Any:
    """One tiny decoded input of ``modality`` (a drawn red circle, its caption, its tone...), what a readiness check
    runs through the encoder; None for a modality that draws no samples."""
    import numpy as np

    from pipeline.modalities import get
    from pipeline.synthetic.draw import Scene

    synthetic = get(modality).synthetic
    return None if synthetic is None else synthetic.draw(Scene("red", "circle"), np.random.default_rng(0))


def warm_up_all(models: dict[str, Any], modality: str) -> dict[str, Any]:
    """``warm_up`` through each version's model: ok when every one embeds; the reason names the version that cannot."""
    states = {version: warm_up(model, modality) for version, model in models.items()}
    failed = [(v, s) for v, s in states.items() if not s["ok"]]
    if failed:
        version, state = failed[0]
        reason = state["reason"] if len(models) == 1 else f"model {version!r}: {state['reason']}"
        return {"ok": False, "ms": None, "reason": reason}
    return {"ok": True, "ms": round(sum(s["ms"] for s in states.values()), 1), "reason": None}


def warm_up(model: Any, modality: str) -> dict[str, Any]:
    """Run the warm-up item through ``model``'s frozen encoder, adapter and projection: {"ok", "ms", "reason"}."""
    import numpy as np

    item = warm_up_item(modality)
    started = time.perf_counter()
    try:
        if item is None:
            model.warm(modality)
        else:
            vectors, _ = model.encode([item], modality)
            if vectors.shape != (1, model.dim) or not np.isfinite(vectors).all():
                raise ValueError(f"gave a vector of shape {vectors.shape} with non-finite values" if vectors.size
                                 else f"gave no vector (shape {vectors.shape})")
    except Exception as e:  # whatever the encoder raised: the replica cannot embed
        return {"ok": False, "ms": None, "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    return {"ok": True, "ms": round(1000 * (time.perf_counter() - started), 1), "reason": None}


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, max_queued_requests=256,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
                  health_check_period_s=10, user_config=BatchSettings().model_dump())
class ModalityEncoder:
    """Frozen encoder + adapter + Universal Projection of one modality; requests are batched."""

    def __init__(self, args: dict[str, Any], modality: str, versions: dict[str, str] | None = None):
        """``versions``: model id → artifact folder of each distinct set of weights this modality is served by (one
        per version, but versions embedding it bit-identically share one); default: the args' model alone."""
        import torch

        from pipeline.inference import load_model

        self.args = ServeArgs(**args)
        torch.set_num_threads(self.args.torch_threads)
        self.modality = modality
        import ray

        gpus = len(ray.get_gpu_ids())  # from the deployment's ray_actor_options (num_gpus)
        self.models = {v: load_model(path, limits=self.args.limits, batch_size=BatchSettings().max_batch_size,
                                     encoder_overrides={"torch_threads": self.args.torch_threads,
                                                        "num_gpus": float(gpus > 0)})
                       for v, path in (versions or {self.args.model_name: self.args.model}).items()}
        # the replica starts only once one item has gone through each version's encoder (loaded, compiled, answering)
        self.health = warm_up_all(self.models, modality)
        if not self.health["ok"]:
            raise RuntimeError(f"encoder-{modality}: the warm-up item failed: {self.health['reason']}")
        self.checked = time.monotonic()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self.items = {"raw": 0, "decoded": 0}  # items embedded from raw values (decoded here) and from decoded arrays
        self.batching = BatchSettings()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = batch_settings(user_config, f"encoder-{self.modality}")
        self.batching = settings
        for batched in (self.embed, self.encode):
            batched.set_max_batch_size(settings.max_batch_size)
            batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        for model in self.models.values():
            model.batch_size = settings.max_batch_size
        log.info("encoder-%s: max_batch_size %d, batch_wait_timeout_s %.3f", self.modality,
                 settings.max_batch_size, settings.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, items: list[Any], limits: list[dict[str, float] | None],
                    versions: list[str | None]) -> list[dict[str, Any]]:
        """One result per item, in order: {"embedding", "input_tokens"} or {"error"} (bad items never fail the batch).
        Called with one item, its request's per-item limits (``serving.budget.request_budget``) or None, and the
        model version whose weights embed it (one of this replica's; None: the first)."""
        self.batch_sizes.append(len(items))
        self.items["raw"] += len(items)
        return await asyncio.to_thread(self._embed, items, limits, versions)

    def _embed(self, items: list[Any], limits: list[dict[str, float] | None] | None = None,
               versions: list[str | None] | None = None) -> list[dict[str, Any]]:
        """The model's one raw-item → vector path, a batch's items grouped by version; an item that gives no vector
        (unreadable, undecodable, failing the encoder, non-finite) becomes an {"error"} result without failing its
        batch-mates. ``limits``: per item, limits tighter than this replica's for that item alone (never looser: each
        is capped at the replica's)."""
        tighter = tighter_limits(limits, self.args.limits) if limits and any(limits) else None
        out: list[dict[str, Any] | None] = [None] * len(items)
        for version, rows in self._by_version(versions, len(items)):
            timings: dict[str, float] = {}
            results = self.models[version].embed_items([items[i] for i in rows], self.modality,
                                                       [tighter[i] for i in rows] if tighter else None, timings)
            record(results, timings, self.modality, version)
            for i, r in zip(rows, results):
                out[i] = answer(r)
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def encode(self, decoded: list[dict[str, Any]], versions: list[str | None]) -> list[dict[str, Any]]:
        """``embed`` for an item the MediaDecoder has decoded: called with its answer ({"decoded": array} or
        {"error", "stage"}, passed through) and the model version; the batch's arrays are encoded together."""
        self.batch_sizes.append(len(decoded))
        self.items["decoded"] += len(decoded)
        return await asyncio.to_thread(self._encode, decoded, versions)

    def _encode(self, decoded: list[dict[str, Any]], versions: list[str | None]) -> list[dict[str, Any]]:
        from pipeline.item_encoder import ItemError

        out: list[dict[str, Any] | None] = [None] * len(decoded)
        for version, rows in self._by_version(versions, len(decoded)):
            good = [i for i in rows if "decoded" in decoded[i]]
            started = time.perf_counter()
            encoded = dict(zip(good, self.models[version].items(self.modality).encode([decoded[i]["decoded"] for i in good])))
            results = [encoded[i] if i in encoded else ItemError(i, decoded[i]["error"], decoded[i]["stage"]) for i in rows]
            record(results, {"encode": time.perf_counter() - started}, self.modality, version)
            for i, r in zip(rows, results):
                out[i] = answer(r)
        return out

    def _by_version(self, versions: list[str | None] | None, n: int) -> list[tuple[str, list[int]]]:
        """A batch's item indices grouped by the version that embeds them (None: this replica's first)."""
        first = next(iter(self.models))
        asked = [v or first for v in (versions or [None] * n)]
        return [(version, [i for i, v in enumerate(asked) if v == version]) for version in dict.fromkeys(asked)]

    def stats(self) -> dict[str, Any]:
        """Observed batch sizes and items by kind since start (for tests and tuning)."""
        return {"modality": self.modality, "batch_sizes": list(self.batch_sizes), "items": dict(self.items),
                **self.batching.model_dump()}

    async def ready(self) -> dict[str, Any]:
        """Readiness (the Gateway's /health): the warm-up item through the encoder again when the last check is
        older than HEALTH_TTL_S; {"ok", "ms", "reason"}."""
        if time.monotonic() - self.checked > HEALTH_TTL_S:
            self.checked = time.monotonic()
            self.health = await asyncio.to_thread(warm_up_all, self.models, self.modality)
            if not self.health["ok"]:
                log.error("encoder-%s cannot embed: %s", self.modality, self.health["reason"])
        return self.health

    def check_health(self) -> None:
        """Serve's liveness check: a replica whose last warm-up check failed is replaced."""
        if not self.health["ok"]:
            raise RuntimeError(f"encoder-{self.modality} cannot embed: {self.health['reason']}")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_queued_requests=256,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
                  health_check_period_s=10)
class MediaDecoder:
    """Decodes media items (ffmpeg, Pillow: CPU work) into the arrays the encoders take (``ServeArgs.decode``:
    ``decoder``): an encoder replica, a GPU's, then only encodes, in batches, and never waits on a decode; this
    deployment scales with the decoding load on CPU nodes. Holds no model: only how each served version's frozen
    encoders want their input decoded (read from the artifacts)."""

    def __init__(self, args: dict[str, Any], versions: dict[str, dict[str, str]]):
        """``versions``: per media modality, model version → artifact folder of each version whose encoder replicas
        run that modality (``_model_info``'s ``route``)."""
        from pipeline.artifact import read_artifact
        from pipeline.inference import decode_settings

        self.args = ServeArgs(**args)
        self.settings = {(m, v): decode_settings(read_artifact(path).encoders[m], self.args.limits)
                         for m, paths in versions.items() for v, path in paths.items()}
        # the replica starts only once a generated file of each modality decodes (ffmpeg found and working)
        states = [decoder_warm_up(s) for s in self.settings.values()]
        failed = [s["reason"] for s in states if not s["ok"]]
        if failed:
            raise RuntimeError(f"{DECODER}: the warm-up file failed to decode: {failed[0]}")
        self.health = {"ok": True, "ms": round(sum(s["ms"] or 0 for s in states), 1), "reason": None}
        self.decoded: collections.Counter[str] = collections.Counter()

    async def decode(self, value: Any, limits: dict[str, float] | None, modality: str, version: str) -> dict[str, Any]:
        """One media item (bytes) → {"decoded": what the encoder of ``modality`` in ``version`` takes} or {"error",
        "stage"}; ``limits``: its request's limits for it (``serving.budget.request_budget``), capped at the
        server's. Decoded in a worker thread: ffmpeg runs as a process, Pillow releases the GIL."""
        return await asyncio.to_thread(self._decode, value, limits, modality, version)

    def _decode(self, value: Any, limits: dict[str, float] | None, modality: str, version: str) -> dict[str, Any]:
        from pipeline.item_encoder import ItemError, decode_raw, with_limits
        from serving.metrics import server_metrics

        settings = with_limits(self.settings[(modality, version)], tighter_limits([limits], self.args.limits)[0])
        self.decoded[modality] += 1
        started = time.perf_counter()
        try:
            decoded = decode_raw(value, settings)
        except ItemError as e:
            return {"error": e.reason, "stage": e.stage}
        finally:
            server_metrics().observe("oneencoder_decode_seconds", time.perf_counter() - started, modality=modality,
                                     model=version)
        return {"decoded": decoded}

    def ready(self) -> dict[str, Any]:
        """Readiness (the Gateway's /health): the start-up decode of each modality's generated file."""
        return self.health

    def stats(self) -> dict[str, Any]:
        """Items decoded since start, by modality (for tests)."""
        return {"decoded": dict(self.decoded)}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256)
class SearchIndex:
    """/v1/search's index when serving a feature store: the store projected through the model at start-up and
    searched exactly (small stores). An index folder (`oneencoder index`) is searched inside the Gateway's replicas
    instead: memory-mapped, it needs no replica of its own and no hop."""

    def __init__(self, args: dict[str, Any]):
        from serving.search import Searcher

        self.searcher = Searcher(ServeArgs(**args))

    def ready(self) -> bool:
        return True

    def search(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``Searcher.search``."""
        return self.searcher.search(*args, **kwargs)

    def uri_of(self, modality: str, item_id: str) -> str | None:
        """``Searcher.uri_of``."""
        return self.searcher.uri_of(modality, item_id)
