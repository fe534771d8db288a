"""Video: N frames sampled uniformly by ffmpeg from allow-listed containers; VideoMAE (paper) or any video model."""
from __future__ import annotations

from typing import Any

from pipeline.media.video import decode_video
from pipeline.modalities.base import InputSpec, Limit, ModalitySpec, Synthetic, forward_pixels, processor_hw


def decode(source: str | bytes, settings: Any):
    """A local video file (or its bytes) → uint8 (num_frames, H, W, 3) at the encoder's size."""
    spec, lim = settings.spec, settings.limits
    return decode_video(source, spec.num_frames, spec.image_hw, lim.max_video_seconds, lim.decode_timeout_s,
                        settings.ffmpeg, settings.ffmpeg_threads)


def input_spec(pre: dict, config: dict, enc: Any) -> InputSpec:
    return InputSpec(image_hw=processor_hw(pre), num_frames=enc.num_frames or int(config.get("num_frames", 16)))


def forward(encoder: Any, clips: list[Any]):
    return forward_pixels(encoder, encoder.processor([list(clip) for clip in clips], return_tensors="pt"))


def build_tiny(dest: str) -> None:
    from transformers import VideoMAEConfig, VideoMAEImageProcessorPil, VideoMAEModel

    cfg = VideoMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=8, num_frames=4, tubelet_size=2)
    VideoMAEModel(cfg).save_pretrained(dest)
    VideoMAEImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(dest)


def build_paper(dest: str) -> None:
    from transformers import VideoMAEConfig, VideoMAEImageProcessorPil, VideoMAEModel

    VideoMAEModel(VideoMAEConfig()).save_pretrained(dest)  # 16 frames, 224x224, tubelet 2
    VideoMAEImageProcessorPil().save_pretrained(dest)



def write_sample(scene: Any, rng: Any, path: str | None) -> None:
    """A one-second clip of ``scene``'s shape sliding left to right (8 frames of 64x64) in ``path``'s format."""
    from pipeline.media.ffmpeg import find_ffmpeg
    from pipeline.synthetic.draw import clip, encode_video

    encode_video(path, clip(scene.colour, scene.shape, rng=rng), 8, find_ffmpeg())


def draw_sample(scene: Any, rng: Any):
    """The decoded clip of ``scene``: uint8 (4, 32, 32, 3), the shape moving along its axis."""
    from pipeline.synthetic.draw import pictures

    return pictures(scene, 32, [f / 3 for f in range(4)], rng)


SPEC = ModalitySpec(
    name="video", inline=False, reads="file", decode=decode, forward=forward, processor="AutoImageProcessor",
    tower="video", paper_model="MCG-NJU/videomae-base", builds={"tiny": build_tiny, "paper": build_paper},
    mime_types=("video/*",), extensions=(".mp4", ".webm", ".mkv", ".mov", ".avi", ".ts", ".ogv"),
    input_spec=input_spec, decoded_bytes=lambda spec, limits: 3 * spec.num_frames * spec.image_hw[0] * spec.image_hw[1],
    limits={"max_video_seconds": Limit(float, 300.0, 60.0, "Longest video accepted; longer is an error.")},
    synthetic=Synthetic(write_sample, draw_sample, folder="video", formats=("mp4", "webm", "mkv")))
