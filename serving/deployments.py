"""Ray Serve deployments: one batched encoder per modality, and the search index of a served feature store."""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

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
