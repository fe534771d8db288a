"""OneEncoder on Ray: the library behind the jobs (embed, train, evaluate)."""
from __future__ import annotations

from typing import Any


def load_model(path: str, **kwargs: Any):
    """Load a model artifact for local embedding: ``load_model(dir).embed(items, modality=...)``.

    Imported lazily so that ``import pipeline`` stays cheap (no torch or transformers).
    """
    from pipeline.inference import load_model as _load_model

    return _load_model(path, **kwargs)
