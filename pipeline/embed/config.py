"""The embed job's configuration: what to read and write, the encoders, and the decode stage's resources.

The parts other programs share (encoder settings, limits, storage, fetching) are in ``pipeline.config``."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.config import (EncoderConfig, HttpConfig, LimitsConfig, StorageConfig, StrictModel, cache_root,
                             split_modalities,
                             load_config, require_fields)
from pipeline.modality import Modality


class DecodeConfig(StrictModel):
    batch_size: int | None = Field(None, ge=1, description="Media items per decode task; null = as many as 8 x "
                                   "batch_bytes hold at the largest decoded size (from the encoder's input size), at "
                                   "most 2048, and no more than spread the run's items over four tasks per CPU of the "
                                   "cluster. Each task costs tens of ms to schedule: small batches leave cores idle.")
    batch_bytes: int = Field(64 << 20, ge=1 << 16, description="Decoded bytes per block: a decode task hands its "
                             "items on (to an encoder-actor call, by default) each time they reach this much, which "
                             "bounds the memory of long videos and audio.")
    inline_batch_size: int = Field(1024, ge=1, description="Text items per decode task (cheap to decode: large batches "
                                   "keep the per-task cost small).")
    num_cpus: float = Field(0.5, gt=0, description="Logical CPUs reserved per decode task.")
    read_num_cpus: float = Field(0.25, gt=0, description="Logical CPUs reserved per manifest-chunk read task.")
    ffmpeg_threads: int = Field(1, ge=0, description="Decoder and filter threads per ffmpeg run (audio, video); "
                                "0 = ffmpeg's choice, a thread per core, which oversubscribes the CPUs when "
                                "decode tasks run side by side.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per read and decode "
                                        "task (e.g. {decode_node: 0.01} to keep decoding on nodes that have it).")
    fused: bool | None = Field(None, description="Decode in the encoder actors instead of in decode tasks; null = "
                               "when every requested encoder runs on CPU (num_gpus 0) and decode.resources is empty. "
                               "It spares each decoded item a trip through the object store; on GPU nodes decode "
                               "tasks keep the GPU actor free to encode.")


class EmbedConfig(StrictModel):
    input: str | None = Field(None, description="Manifest URI (JSONL, CSV or Parquet), or WebDataset tar shards (a "
                              ".tar, a folder of them or a brace pattern such as shard-{000000..000099}.tar); local "
                              "path or s3://.")
    output: str | None = Field(None, description="Output folder URI (local path or s3://).")
    preset: Literal["tiny", "paper"] = Field("tiny", description="Encoder preset: tiny (offline, tests) or paper (the paper's encoders).")
    random_init: bool = Field(False, description="Build the preset's architectures with random weights, offline (benchmarks).")
    modalities: list[Modality] | None = Field(None, description="Modalities to embed; null = every modality column in the manifest.")
    overwrite: bool = Field(False, description="Delete earlier output and start over instead of resuming.")
    shard_size: int = Field(256, ge=1, le=1_000_000, description="Manifest rows per committed shard (each modality's "
                            "items of those rows): the unit of resume.")
    chunk_rows: int = Field(100_000, ge=1, description="Manifest rows per read task (a JSONL/CSV chunk ends at "
                            "the end of the driver's 8 MB read that reaches it, a Parquet one at a row group's, "
                            "or where its rows reach 256 MB of media held in the file).")
    tar_index: Literal["auto", "headers"] = Field("auto", description="Tar shards: where planning finds their "
                                                  "keys. auto = img2dataset's or video2dataset's .parquet beside each tar, when the first "
                                                  "agrees with its tar (else headers); headers = read every tar's "
                                                  "member headers (on S3 that streams each tar once more).")
    dedupe: bool = Field(True, description="Decode and encode each distinct media once; every id still gets its "
                         "own row. Media URIs: the same string anywhere in the manifest (planning holds a 16-byte "
                         "digest per item), or the same resolved URI within a read chunk; text: the same string, and "
                         "media held in the input: the same bytes (SHA-256), within a read chunk.")
    actor_batch_rows: int | None = Field(None, ge=1, description="Rows per encoder-actor call; null = each decode "
                                         "task's output as it comes (decode.batch_size rows, batch_bytes decoded), "
                                         "with no re-cutting. Each modality's encoder runs its own batch_size within it.")
    cache_dir: str | None = Field(None, description="Where built tiny/random-init models are saved; null = $ONEENCODER_CACHE or ~/.cache/oneencoder.")
    ffmpeg: str | None = Field(None, description="ffmpeg binary; null = $ONEENCODER_FFMPEG, else ffmpeg on PATH, else imageio-ffmpeg's.")
    no_progress_timeout_s: float = Field(1800.0, gt=0, description="Fail the job if Ray Data makes no progress for this long.")
    wait_for_resources_s: float = Field(60.0, ge=0, description="How long the job waits for CPUs/GPUs that other work "
                                        "on its Ray instance holds (e.g. a Serve app) when no autoscaler can add "
                                        "nodes; it says at once what it waits for and who holds it, then fails.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 access.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="Fetching http(s) media URLs.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Size, duration and time limits on inputs.")
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="Decode stage resources.")
    encoders: dict[Modality, EncoderConfig] = Field(default_factory=dict, description="Per-modality encoder settings.")

    _split_modalities = field_validator("modalities", mode="before")(split_modalities)

    def encoder(self, modality: Modality) -> EncoderConfig:
        """The encoder settings for ``modality`` (defaults where the config names none)."""
        return self.encoders.get(modality, EncoderConfig())

    def resolved_cache_dir(self) -> str:
        """The model cache folder (not created here)."""
        return self.cache_dir or cache_root()


def load_embed_config(path: str | None = None, **overrides: Any) -> EmbedConfig:
    """The embed job's config from YAML (optional) + CLI flags; see ``load_config``."""
    return load_config(EmbedConfig, path, **overrides)


def require_paths(cfg: EmbedConfig) -> None:
    """Raise ConfigError unless the embed job has both an input manifest and an output folder."""
    require_fields(cfg, input="a manifest URI", output="a folder URI")
