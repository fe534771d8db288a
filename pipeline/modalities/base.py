"""What a modality is, as one record: the registry's entry type, and the input sizes its decoder targets."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:  # annotations only: this module stays free of torch, transformers and Ray
    import numpy as np

    from pipeline.encoders.frozen import FrozenEncoder
    from pipeline.media.decode import DecodeSettings
    from pipeline.synthetic.draw import Scene


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the decoders must produce for an encoder (read from its processor/config files only)."""

    image_hw: tuple[int, int] = (224, 224)
    sample_rate: int = 16000
    num_frames: int = 16


@dataclasses.dataclass(frozen=True)
class Limit:
    """A limit a modality's decoder enforces: its type, its default in jobs and in serving (where inputs come
    from anyone), what it bounds, and its pydantic bounds (e.g. {"ge": 1}). It becomes a field of
    ``limits`` in the job's and the server's configs."""

    kind: type
    job: Any
    serve: Any
    description: str
    bounds: dict[str, Any] = dataclasses.field(default_factory=lambda: {"gt": 0})


# images and depth maps are both bounded by their pixel count (decompression bombs), under one name
IMAGE_PIXELS = Limit(int, 60_000_000, 40_000_000, "Largest image or depth map (width*height) decoded; guards against "
                     "decompression bombs.", {"ge": 1})


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """How a modality renders a generated sample's concept (``pipeline.synthetic.draw.Scene``: a colour and a
    shape, and how this sample varies), for the demo and sample corpora, the test fixtures and the quality
    experiments, which loop over the registry (``pipeline.synthetic.corpus``).

    ``write(scene, rng, path)`` writes the sample as a file at ``path`` (its extension picks the format, one of
    ``formats``) and returns None; an inline modality is given no path and returns the manifest's value.
    ``draw(scene, rng)`` returns the decoded input (what ``decode`` would produce) in the scene's style. Both
    draw any randomness from ``rng``: one generator shared by a sample's modalities in registry order, and by
    the samples one after another. A modality added to the registry whose ``draw`` takes numbers from it
    therefore changes every later sample of the modalities before it, and the quality bar's corpora with them:
    a new modality's ``draw`` should take none (as depth's), or its own generator seeded from the scene.
    """

    write: Callable[["Scene", "np.random.Generator", str | None], str | None]
    draw: Callable[["Scene", "np.random.Generator"], Any]
    folder: str = ""                            # sub-folder of a written corpus ("" for an inline modality)
    formats: tuple[str, ...] = ()               # file formats a written corpus cycles through, by sample index

    def file_name(self, index: int) -> str:
        """Sample ``index``'s file, relative to the corpus: ``folder/NNNNN.format`` (formats cycled)."""
        return f"{self.folder}/{index:05d}.{self.formats[index % len(self.formats)]}"


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """Everything about one modality; the embed job, ``load_model``, serving, configs and the demo corpus
    read it from here (``pipeline.modalities.REGISTRY``) instead of branching on the modality's name.

    ``decode(source, settings)`` turns one item into what ``forward`` takes: ``source`` is the manifest's
    string for an inline modality, the media's bytes when ``reads == "bytes"`` (decoded from memory); when
    ``reads == "file"`` (ffmpeg), a local file path, or the bytes of media that needs no seeking
    (``pipeline.media.ffmpeg.pipe_ok``: given on ffmpeg's stdin). It raises ``DecodeError`` naming the limit or
    format at fault. ``forward(encoder, batch)`` runs the frozen encoder on a batch of decoded items and
    returns ``(hidden (B, T, D) tensor, valid token counts (B,))``.
    """

    name: str                                   # the manifest column, config key and API `modality` value
    inline: bool                                # the manifest/API holds the value itself (text), not media
    reads: Literal["inline", "bytes", "file"]   # what ``decode`` is given (see above)
    decode: Callable[[Any, "DecodeSettings"], Any]
    forward: Callable[["FrozenEncoder", list[Any]], tuple[Any, Any]]
    processor: str                              # transformers Auto* class loading the encoder's own processor
    tower: str                                  # the tower taken from a dual-tower checkpoint (CLIP, SigLIP, CLAP)
    paper_model: str                            # the `paper` preset's frozen encoder (hub id)
    builds: dict[str, Callable[[str], None]]    # offline builds ("tiny", "paper" random-init) into a folder
    mime_types: tuple[str, ...] = ()            # data: URI types accepted; "major/*" matches a whole major type
    routes_mime: bool = True                    # a data: URI of these types means this modality when none is named
    extensions: tuple[str, ...] = ()            # file extensions of the accepted formats (docs, corpus, listings)
    input_spec: Callable[[dict, dict, Any], InputSpec] | None = None  # (preprocessor json, config json, EncoderConfig)
    decoded_dtype: str = "uint8"                # numpy dtype of a decoded array ("str" for text)
    decoded_bytes: Callable[[InputSpec, Any], int] | None = None  # (input spec, LimitsConfig) → the most one decoded
                                                # item takes (sizes decode batches by bytes; None: inline, small)
    limits: dict[str, Limit] = dataclasses.field(default_factory=dict)  # its decoder's limits, by config field name
    synthetic: Synthetic | None = None          # generated samples of a concept (None: not in generated corpora)

    def __post_init__(self) -> None:
        synth = self.synthetic
        if synth is None:
            return
        if bool(synth.folder) == self.inline or bool(synth.formats) == self.inline:
            raise ValueError(f"modality {self.name!r}: synthetic samples of an inline modality have no folder or "
                             "formats, those of a media modality both")
        unknown = [f for f in synth.formats if f".{f}" not in self.extensions]
        if unknown:
            raise ValueError(f"modality {self.name!r}: synthetic formats {unknown} are not among its extensions "
                             f"{list(self.extensions)}")

    def accepts_mime(self, mime: str) -> bool:
        """Whether a data: URI of type ``mime`` (lower case, no parameters) may hold this modality."""
        major = mime.split("/", 1)[0]
        return any(m == mime or (m.endswith("/*") and m[:-2] == major) for m in self.mime_types)


def processor_hw(pre: dict[str, Any]) -> tuple[int, int]:
    """(height, width) an image processor resizes/crops to, from its preprocessor_config.json."""
    for key in ("crop_size", "size"):
        size = pre.get(key)
        if isinstance(size, int):
            return size, size
        if not isinstance(size, dict):
            continue
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return 224, 224


def forward_pixels(encoder: Any, batch: Any):
    """The tail of every pixel modality's forward: its processor's ``pixel_values`` through the model; every
    patch (or tubelet) is a valid token. Returns (hidden (B, T, D), lengths (B,))."""
    import torch

    hidden = encoder.run(pixel_values=batch["pixel_values"].to(encoder.device, encoder.dtype))
    return hidden, torch.full((hidden.shape[0],), hidden.shape[1])


def image_input_spec(pre: dict, config: dict, enc: Any) -> InputSpec:
    return InputSpec(image_hw=processor_hw(pre))
