"""Offline builds of encoder architectures: the tiny preset and random-init copies of the paper's.

The builders themselves live with their modality (``ModalitySpec.builds``); this module makes them safe
to call from many actors at once.

Each build is deterministic (fixed seed), written with ``save_pretrained`` into a cache folder and
loaded back through the same ``from_pretrained`` path as hub models. Builds are atomic: a folder is
built under a temporary name and renamed into place, so concurrent actors never see half a model.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

from pipeline.modality import Modality

log = logging.getLogger(__name__)
BUILD_VERSION = "v1"  # bump when a builder changes, so caches are rebuilt


def ensure_built(kind: str, modality: Modality, cache_dir: str) -> str:
    """Return the folder of the offline build ``kind`` ('tiny' or 'paper') of ``modality``, building it once."""
    if kind not in modality.spec.builds:
        raise ValueError(f"modality {modality} has no {kind!r} build (it has {', '.join(modality.spec.builds)})")
    dest = os.path.join(cache_dir, f"{kind}-{BUILD_VERSION}", modality.value)
    if os.path.exists(os.path.join(dest, "config.json")):
        return dest
    import torch

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{modality.value}-", dir=os.path.dirname(dest))
    log.info("building %s %s encoder (random weights, seed 0) into %s", kind, modality.value, dest)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            modality.spec.builds[kind](tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.exists(os.path.join(dest, "config.json")):  # another process won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
