"""Readiness that means it: an encoder replica is ready once one tiny item has gone through its encoder, adapter and
projection, checks it again on later probes, and says why when it cannot embed."""
from __future__ import annotations

import asyncio
import math
import types

import numpy as np
import pytest

from serving.deployments import HEALTH_TTL_S, ModalityEncoder, warm_up, warm_up_item


@pytest.fixture(scope="module")
def model(trained):
    from pipeline.inference import load_model

    return load_model(trained[0])


def test_every_modality_embeds_its_warm_up_item(model):
    for modality in model.modalities:
        state = warm_up(model, modality)
        assert state["ok"] and state["ms"] > 0 and state["reason"] is None, (modality, state)
        vector, _ = model.encode([warm_up_item(modality)], modality)
        assert vector.shape == (1, model.dim) and math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-4)


def test_a_replica_that_cannot_embed_says_so_and_is_replaced(trained):
    """The projection's weights turned to NaN (what an fp16 overflow or a corrupted load gives): the next probe after
    HEALTH_TTL_S runs the item again, reports the reason, and Serve's liveness check fails so the replica is replaced;
    a probe within HEALTH_TTL_S reuses the last answer."""
    import torch

    from pipeline.inference import load_model

    broken = load_model(trained[0])
    replica = types.SimpleNamespace(models={"oneencoder": broken}, modality="image", health=warm_up(broken, "image"),
                                    checked=0.0)  # as the replica's constructor leaves it, its check long ago
    encoder = ModalityEncoder.func_or_class
    assert asyncio.run(encoder.ready(replica))["ok"]
    encoder.check_health(replica)  # alive
    with torch.no_grad():
        for p in broken.model.parameters():
            p.fill_(float("nan"))
    assert asyncio.run(encoder.ready(replica))["ok"], "a probe within HEALTH_TTL_S ran the item again"
    replica.checked -= HEALTH_TTL_S + 1
    state = asyncio.run(encoder.ready(replica))
    assert not state["ok"] and state["ms"] is None and "non-finite" in state["reason"], state
    with pytest.raises(RuntimeError, match="encoder-image cannot embed: .*non-finite"):
        encoder.check_health(replica)
