"""Ray Serve deployments: one batched encoder per modality, and the search index."""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import numpy as np
from ray import serve

from serving.config import BatchSettings, ServeArgs, batch_settings

log = logging.getLogger("serving")


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, max_queued_requests=256,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
                  health_check_period_s=10, user_config=BatchSettings().model_dump())
class ModalityEncoder:
    """Frozen encoder + adapter + Universal Projection of one modality; requests are batched."""

    def __init__(self, args: dict[str, Any], modality: str):
        import torch

        from pipeline.inference import load_model

        self.args = ServeArgs(**args)
        torch.set_num_threads(self.args.torch_threads)
        self.modality = modality
        import ray

        gpus = len(ray.get_gpu_ids())  # from the deployment's ray_actor_options (num_gpus)
        self.model = load_model(self.args.model, limits=self.args.limits, batch_size=BatchSettings().max_batch_size,
                                encoder_overrides={"torch_threads": self.args.torch_threads, "num_gpus": float(gpus > 0)})
        self.model.warm(modality)  # the replica reports healthy only once its encoder is loaded
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self.batching = BatchSettings()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = batch_settings(user_config, f"encoder-{self.modality}")
        self.batching = settings
        self.embed.set_max_batch_size(settings.max_batch_size)
        self.embed.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.model.batch_size = settings.max_batch_size
        log.info("encoder-%s: max_batch_size %d, batch_wait_timeout_s %.3f", self.modality,
                 settings.max_batch_size, settings.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, items: list[Any], limits: list[dict[str, float] | None]) -> list[dict[str, Any]]:
        """One result per item, in order: {"embedding", "input_tokens"} or {"error"} (bad items never fail the batch).
        Called with one item and its request's per-item limits (``serving.budget.request_budget``), or None."""
        self.batch_sizes.append(len(items))
        return await asyncio.to_thread(self._embed, items, limits)

    def _embed(self, items: list[Any], limits: list[dict[str, float] | None] | None = None) -> list[dict[str, Any]]:
        """The model's one raw-item → vector path; an item that gives no vector (unreadable, undecodable, failing
        the encoder, non-finite) becomes an {"error"} result without failing its batch-mates. ``limits``: per item,
        limits tighter than this replica's for that item alone (never looser: each is capped at the replica's)."""
        from pipeline.item_encoder import ItemError

        own = self.args.limits if limits and any(limits) else None
        tighter = [{k: min(v, getattr(own, k)) for k, v in (lim or {}).items()} or None for lim in limits] if own else None
        return [{"error": r.reason} if isinstance(r, ItemError) else {"embedding": r.vector, "input_tokens": r.input_tokens}
                for r in self.model.embed_items(items, self.modality, tighter)]

    def stats(self) -> dict[str, Any]:
        """Observed batch sizes since start (for tests and tuning)."""
        return {"modality": self.modality, "batch_sizes": list(self.batch_sizes), **self.batching.model_dump()}

    def ready(self) -> bool:
        return True

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError(f"encoder-{self.modality}: model not loaded")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256)
class SearchIndex:
    """/v1/search's index: an index folder from `oneencoder index` (memory-mapped segments, HNSW above their size
    threshold), or a feature store projected through the model at start-up and searched exactly (small stores)."""

    def __init__(self, args: dict[str, Any]):
        from pipeline.index.segments import Segment, VectorIndex

        self.args = ServeArgs(**args)
        if self.args.index:
            index = VectorIndex(self.args.index, self.args.storage.model_dump())
            index.check_model(self.args.model)
            self.segments = index.segments  # every indexed modality, whichever encoders are served
            self.calibration = index.calibration
        else:
            import pyarrow as pa

            from pipeline.inference import load_model
            from pipeline.store.features import FeatureStore, embeddings, read_features

            model = load_model(self.args.model)
            storage = self.args.storage.model_dump()
            store = FeatureStore(self.args.features, storage)
            self.segments = {}
            for modality in self.args.modalities or model.modalities:
                if store.run_record(modality) is None:  # a modality the embed job did not write
                    continue
                table = read_features(self.args.features, modality, storage)
                # a modality with no rows stays indexed, empty: searching it finds nothing (the Gateway lists it)
                vectors = (model.project(embeddings(table).astype(np.float32), modality) if table.num_rows
                           else np.zeros((0, model.dim), np.float32))
                ids = (table.select(["id", "uri"]) if table.num_rows
                       else pa.table({"id": pa.array([], pa.string()), "uri": pa.array([], pa.string())}))
                self.segments[modality] = [Segment(modality, "store", vectors, ids.combine_chunks())]
            if not any(len(seg) for segs in self.segments.values() for seg in segs):
                raise ValueError(f"feature store {self.args.features} has no features for any modality of the model "
                                 f"({', '.join(model.modalities)})")
            self.calibration = _calibrate(model, self.segments)
        log.info("search index: %s", ", ".join(f"{m} {sum(len(s) for s in segs)}" for m, segs in self.segments.items()))

    def ready(self) -> bool:
        return True

    def search(self, query: np.ndarray, query_modality: str, targets: list[str] | None, k: int, exact: bool = False,
               id_prefix: str | None = None, hubness: bool = False, min_match: float | None = None,
               where: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Top ``k`` items over the ``targets`` modalities (all when None), by cosine, or by calibrated match when
        several are searched; ``exact`` scans every vector instead of asking the graphs; ``id_prefix`` keeps ids
        that start with it; ``where`` keeps rows whose metadata columns hold one of the listed values; ``hubness``
        applies the query bank's correction; ``min_match`` drops hits less likely to be the query's partner.
        ``{"hits", "ranking"}``, or ``{"error", "param"}`` for a request the index cannot answer (no calibration for
        a pair)."""
        from pipeline.index.segments import search_segments

        targets = targets or list(self.segments)
        cal = self.calibration
        if hubness and (cal is None or query_modality not in cal.banks):
            return {"param": "hubness", "error": f"hubness: the index has no query bank of {query_modality} (an index "
                    "built before calibration existed, or no sample of that modality); search without it"}
        missing = [t for t in targets if cal is None or not cal.has(query_modality, t, hubness)]
        if min_match is not None and missing:
            return {"param": "min_match", "error": f"min_match: the index has no calibration for {query_modality} -> "
                    f"{missing[0]} (its calibration sample shares too few ids of the two modalities); search without it"}
        hits = search_segments(self.segments, query, targets, k, exact, id_prefix, query_modality=query_modality,
                               calibration=cal, hubness=hubness, where=where)
        if min_match is not None:
            hits = [h for h in hits if h.match >= min_match]
        ranking = "match" if len(targets) > 1 and not missing else "score"
        return {"ranking": ranking, "hits": [{"id": h.id, "modality": h.modality, "uri": h.uri, "score": h.score,
                                              **({"match": h.match} if h.match is not None else {}),
                                              **({"metadata": h.metadata} if h.metadata is not None else {})}
                                             for h in hits]}


def _calibrate(model: Any, segments: dict[str, list[Any]]) -> Any:
    """The calibration of a store projected at start-up, fitted as the index job fits it (the model's held-out ids)."""
    from pipeline.index.calibration import fit_held_out

    projected = {m: (segs[0].ids.column("id").to_pylist(), np.asarray(segs[0].vectors)) for m, segs in segments.items()}
    return fit_held_out(projected, *model.held_out)
