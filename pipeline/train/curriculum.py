"""Which parts of the model train and which are frozen in each stage."""
from __future__ import annotations

from torch import nn

from pipeline.model import OneEncoder


def trainable_parts(model: OneEncoder, stage_index: int, new: str, anchor: str) -> list[nn.Module | nn.Parameter]:
    """Stage 1 trains both adapters, both tokens and the Universal Projection.

    Later stages train only the new modality's adapter and token (and its token positions when K > 1); everything already aligned
    (the UP, every earlier adapter and token) is frozen, so earlier retrieval cannot change.
    """
    trained = [new, anchor] if stage_index == 0 else [new]
    parts = [model.adapters[n] for n in trained] + [model.modality_tokens[n] for n in trained]
    parts += [model.positions[n] for n in trained if n in model.positions]  # K > 1: learned token positions
    return parts + [model.up] if stage_index == 0 else parts


def apply_freeze(model: OneEncoder, parts: list[nn.Module | nn.Parameter]) -> None:
    """requires_grad only on ``parts``; frozen modules are put in eval mode (no dropout)."""
    model.requires_grad_(False)
    for part in parts:
        part.requires_grad_(True)
    set_modes(model, parts)


def set_modes(model: OneEncoder, parts: list[nn.Module | nn.Parameter]) -> None:
    """Train mode for trainable modules, eval mode for frozen ones (call after model.train())."""
    model.eval()
    for part in parts:
        if isinstance(part, nn.Module):
            part.train()
