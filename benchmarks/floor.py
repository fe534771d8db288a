"""The floor under the serving benchmark: a bare Ray Serve application with the same hops as ours (a FastAPI
ingress, then one ``@serve.batch`` replica; for media, a replica standing for the MediaDecoder between them, its
answer handed on by Ray as ours is) that returns a constant unit vector, so what the serve benchmark measures above
it, beside the model's own in-process time, is this project's.

Kept apart from ``benchmarks.serve`` so that importing the benchmark (its config, in tests) does not import Serve.
No ``from __future__ import annotations``: FastAPI reads the handler's ``Request`` annotation at runtime.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class ConstantEncoder:
    """One batched replica answering every item with the same unit vector."""

    def __init__(self, dim: int, max_batch_size: int, batch_wait_timeout_s: float):
        self.vector = [float(dim) ** -0.5] * dim
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed(self, items: list[Any]) -> list[list[float]]:
        return [self.vector for _ in items]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16)
class PassThrough:
    """The decoder's hop, doing nothing: its answer is the item."""

    async def decode(self, item: Any) -> Any:
        return item


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
@serve.ingress(api)
class FloorGateway:
    """The ingress: reads the JSON body, asks the encoder for its one input (through the pass-through hop, if any,
    chained as ours chains the decoder), answers as /v1/embeddings does."""

    def __init__(self, encoder: Any, decoder: Any = None):
        self.encoder, self.decoder = encoder, decoder

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> JSONResponse:
        body = await request.json()
        item = body["input"] if self.decoder is None else self.decoder.decode.remote(body["input"])
        vector = await self.encoder.embed.remote(item)
        return JSONResponse({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                             "model": body.get("model")})


def floor_app(dim: int, max_batch_size: int, batch_wait_timeout_s: float, decoder_hop: bool = False) -> Any:
    """The bound application: the encoder with the batch settings of the encoders it stands beside; with
    ``decoder_hop``, the pass-through replica before it (media's three hops)."""
    return FloorGateway.bind(ConstantEncoder.bind(dim, max_batch_size, batch_wait_timeout_s),
                             PassThrough.bind() if decoder_hop else None)
