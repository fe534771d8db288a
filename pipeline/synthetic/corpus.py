"""Generated corpora over the modality registry: every modality with a ``synthetic`` entry takes part."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from pipeline.modalities import REGISTRY
from pipeline.modality import Modality
from pipeline.synthetic.draw import Scene, concept, scene

SAMPLE_MODALITIES = ("image", "text", "audio", "video")  # a sample corpus's columns by default (depth: on request)


def synthetic_modalities() -> list[Modality]:
    """The registered modalities that can generate samples, in registry order."""
    return [Modality(name) for name, spec in REGISTRY.items() if spec.synthetic is not None]


def synthetic_entries(modalities) -> list[tuple[Modality, Any]]:
    """``(modality, its Synthetic entry)`` of each of ``modalities``, in registry order; ValueError naming every one
    that cannot generate samples."""
    wanted = {Modality(m) for m in modalities}
    missing = [m for m in Modality.all() if m in wanted and m.spec.synthetic is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} cannot generate samples: expected some of "
                         f"{', '.join(synthetic_modalities())}")
    return [(m, m.spec.synthetic) for m in Modality.all() if m in wanted]


def write_sample_corpus(dest: str, n: int = 24, seed: int = 0, modalities: tuple[str, ...] = SAMPLE_MODALITIES,
                        vary: bool = False) -> str:
    """Write ``n`` paired samples and ``dest/manifest.jsonl`` (relative URIs); return the manifest path.

    Sample ``i`` renders concept ``i`` in each of ``modalities`` (in registry order), as a file under the
    modality's folder in one of its formats (cycled by ``i``: PNG/JPEG images, WAV/FLAC/MP3/Ogg/M4A audio,
    MP4/WebM/MKV video, 16-bit PNG/.npy/float TIFF depth maps) or inline (captions). With ``vary``, samples
    of one concept differ (caption templates, detuned and noisy tones: training corpora); without it every
    concept is rendered one way.
    """
    rng = np.random.default_rng(seed)
    chosen = synthetic_entries(modalities)
    os.makedirs(dest, exist_ok=True)
    for modality, synth in chosen:
        if not modality.is_inline:
            os.makedirs(os.path.join(dest, synth.folder), exist_ok=True)
    rows = []
    for i in range(n):
        sample = Scene(*concept(i), vary=vary)  # nothing drawn up front: each modality draws as it writes
        row: dict[str, str] = {"id": f"s{i:05d}"}
        for modality, synth in chosen:
            if not modality.is_inline:
                name = synth.file_name(i)
                synth.write(sample, rng, os.path.join(dest, name))
                row[modality.value] = name
            else:
                row[modality.value] = synth.write(sample, rng, None)
        rows.append(row)
    manifest = os.path.join(dest, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


def concept_inputs(i: int, rng: np.random.Generator, style: str = "suite") -> dict[Modality, object]:
    """Decoded inputs of sample ``i`` in every synthetic modality (what the decoders would produce), varied per
    sample, in one of ``STYLES``: the scene's variation first, then each modality in registry order."""
    sample = scene(i, rng, style)  # ValueError naming the styles for another
    return {m: m.spec.synthetic.draw(sample, rng) for m in synthetic_modalities()}
