"""The modality registry: one module per modality holds everything about it (``ModalitySpec``).

The embed job, ``load_model``, serving, config validation, evaluation and the demo corpus iterate
``REGISTRY``; a name not in it is an error everywhere. Adding a modality = one module here plus its
line below (see docs/adding-a-modality.md).
"""
from __future__ import annotations

from pipeline.modalities import audio, depth, image, text, video
from pipeline.modalities.base import InputSpec, ModalitySpec

REGISTRY: dict[str, ModalitySpec] = {m.SPEC.name: m.SPEC for m in (image, text, audio, video, depth)}

__all__ = ["REGISTRY", "InputSpec", "ModalitySpec", "get", "names", "for_mime"]


def names() -> list[str]:
    """Every registered modality, in registry order."""
    return list(REGISTRY)


def get(name: str) -> ModalitySpec:
    """The modality called ``name``; ValueError naming the registered ones otherwise."""
    spec = REGISTRY.get(str(name))
    if spec is None:
        raise ValueError(f"unknown modality {name!r}: expected one of {', '.join(REGISTRY)}")
    return spec


def for_mime(mime: str) -> ModalitySpec | None:
    """The modality a data: URI of type ``mime`` holds when the request names none (None: no such modality).
    Types several modalities accept (a PNG may be an image or a depth map) go to the one that routes them."""
    return next((m for m in REGISTRY.values() if m.routes_mime and m.accepts_mime(mime)), None)
