"""Depth maps (ImageBind's fifth modality): single-channel 16-bit PNG, TIFF or ``.npy``, decoded from memory.

A map is read as float depths, pixels that are 0 or not finite count as missing, and the rest are
divided by the map's largest depth: float32 (H, W) in [0, 1], so sensors with other units (mm, m)
give the same input. The frozen encoder is a ViT: the tiny preset one with a single input channel,
the paper preset the image ViT (google/vit-base-patch16-224) with the map repeated over its three
channels; any ViT-like checkpoint (a CLIP/SigLIP vision tower too) works through the same path.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from pipeline.media.errors import DecodeError
from pipeline.media.image import check_pixels, pillow_errors
from pipeline.modalities.base import IMAGE_PIXELS, ModalitySpec, Synthetic, forward_pixels, image_input_spec

FORMATS = ("PNG", "TIFF")                       # the only Pillow formats a depth map may be read as
MODES = ("I;16", "I;16B", "I;16L", "I", "F", "L")  # single-channel integer or float pixels
NPY_MAGIC = b"\x93NUMPY"


def decode(data: bytes, settings: Any) -> np.ndarray:
    """Depth map bytes → float32 (H, W) in [0, 1], at most twice the encoder's input size. Raises DecodeError."""
    max_pixels = settings.limits.max_image_pixels
    depth = _read_npy(data, max_pixels) if data[:6] == NPY_MAGIC else _read_image(data, max_pixels)
    return _normalise(_shrink(depth, settings.spec.image_hw))


def _read_npy(data: bytes, max_pixels: int) -> np.ndarray:
    """A ``.npy`` array, its header checked before any data is touched: no pickles, no object or structured
    dtypes, 2-D (or H x W x 1), at most ``max_pixels``, and exactly as many bytes as the header says."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} (expected 1.0 or 2.0)")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(buf)
    except Exception as e:  # numpy parses the header with ast/tokenize: hostile bytes raise all sorts
        raise DecodeError(f"corrupt .npy depth map header: {type(e).__name__}: {str(e)[:200]}") from None
    if dtype.fields is not None or dtype.kind not in "uif" or dtype.itemsize > 8:
        raise DecodeError(f".npy depth map has dtype {dtype}: expected integer or float depths")
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) != 2 or min(shape) <= 0:
        raise DecodeError(f".npy depth map has shape {shape}: expected (height, width) or (height, width, 1)")
    check_pixels("depth map", shape[1], shape[0], max_pixels)
    count = shape[0] * shape[1]
    if len(data) - buf.tell() < count * dtype.itemsize:
        raise DecodeError(f"truncated .npy depth map: {len(data) - buf.tell()} bytes of data, "
                          f"expected {count * dtype.itemsize} for shape {shape}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return (flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)).astype(np.float32)


def _read_image(data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image

    with pillow_errors("depth map", "not a depth map format we accept: expected 16-bit PNG, TIFF or .npy"):
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        check_pixels("depth map", img.width, img.height, max_pixels)
        if img.mode not in MODES:
            raise DecodeError(f"depth map has {img.mode} pixels: expected one channel (16-bit or 32-bit integer, "
                              "float, or 8-bit grey); send colour pictures as modality image")
        img.load()
        return np.asarray(img).astype(np.float32)


def _shrink(depth: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    """Maps much larger than the encoder's input shrink (nearest: missing pixels never blend into depths)."""
    from PIL import Image

    bound = (2 * target_hw[1], 2 * target_hw[0])
    height, width = depth.shape
    if width <= bound[0] and height <= bound[1]:
        return depth
    img = Image.fromarray(np.ascontiguousarray(depth, np.float32), mode="F")
    img.thumbnail(bound, Image.Resampling.NEAREST)
    return np.asarray(img, np.float32)


def _normalise(depth: np.ndarray) -> np.ndarray:
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise DecodeError("depth map has no valid pixels: expected positive, finite depths (0 or NaN mark missing)")
    return np.where(valid, depth / depth[valid].max(), 0.0).astype(np.float32)


def forward(encoder: Any, maps: list[np.ndarray]):
    """(H, W) maps → repeated over the model's input channels → its processor (no 1/255 rescale: maps are in
    [0, 1] already) → hidden (B, patches, D)."""
    config = encoder.model.config
    channels = int(getattr(getattr(config, "vision_config", config), "num_channels", 1))
    images = [np.repeat(m[..., None], channels, axis=-1) for m in maps]
    return forward_pixels(encoder, encoder.processor(images=images, do_rescale=False, input_data_format="channels_last",
                                                     return_tensors="pt"))


def build_tiny(dest: str) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8, num_channels=1)
    ViTModel(cfg).save_pretrained(dest)
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5], image_std=[0.5]).save_pretrained(dest)


def build_paper(dest: str) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    ViTModel(ViTConfig()).save_pretrained(dest)  # the paper preset's architecture: ViT-B/16, 3 channels, 224
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(dest)



# --- generated samples ---------------------------------------------------------------------------------
def depth_map(colour: str, shape: str, size: int = 96, offset: float = 0.0, scale: float = 0.3,
              vertical: bool = False) -> np.ndarray:
    """A depth map of ``draw_shape``'s scene, uint16 millimetres (size, size): a wall 4 m away and the shape in
    front of it, nearer the earlier its colour is in COLOURS (so a map holds the colour as a distance)."""
    from PIL import Image, ImageDraw

    from pipeline.synthetic.draw import COLOURS, paint_shape, placement

    img = Image.new("I", (size, size), 4000)
    near = 1000 + 400 * list(COLOURS).index(colour)
    paint_shape(ImageDraw.Draw(img), shape, *placement(size, offset, scale, vertical), fill=near)
    return np.asarray(img).astype(np.uint16)


def write_depth(path: str, millimetres: np.ndarray) -> None:
    """Save a uint16 depth map as ``path``'s format: 16-bit PNG or .npy in millimetres, float32 TIFF in metres."""
    from PIL import Image

    if path.endswith(".npy"):
        np.save(path, millimetres)
    elif path.endswith((".tif", ".tiff")):
        Image.fromarray(millimetres.astype(np.float32) / 1000, mode="F").save(path)
    else:
        Image.fromarray(millimetres).save(path)  # uint16 -> mode I;16 -> a 16-bit greyscale PNG


def write_sample(scene: Any, rng: Any, path: str | None) -> None:
    """The depth map of ``scene``'s picture (``draw_shape``'s, 96x96): 16-bit PNG or .npy in millimetres, float
    TIFF in metres, by ``path``'s extension."""
    write_depth(path, depth_map(scene.colour, scene.shape))


def draw_sample(scene: Any, rng: Any) -> np.ndarray:
    """The decoded depth map of ``scene``'s picture: float32 (64, 64), depths over the largest (draws nothing)."""
    millimetres = depth_map(scene.colour, scene.shape, size=64, offset=scene.offset, scale=scene.scale,
                            vertical=scene.vertical)
    return (millimetres / millimetres.max()).astype(np.float32)


SPEC = ModalitySpec(
    name="depth", inline=False, reads="bytes", decode=decode, forward=forward, processor="AutoImageProcessor",
    tower="vision", paper_model="google/vit-base-patch16-224", builds={"tiny": build_tiny, "paper": build_paper},
    mime_types=("image/png", "image/tiff", "application/x-npy"), routes_mime=False,  # a PNG is an image unless named
    extensions=(".png", ".tif", ".tiff", ".npy"), input_spec=image_input_spec, decoded_dtype="float32",
    decoded_bytes=lambda spec, limits: 16 * spec.image_hw[0] * spec.image_hw[1], limits={"max_image_pixels": IMAGE_PIXELS},
    synthetic=Synthetic(write_sample, draw_sample, folder="depth", formats=("png", "npy", "tiff")))
