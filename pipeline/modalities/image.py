"""Images: Pillow-decoded from memory (JPEG, PNG, WebP, GIF, BMP, TIFF); ViT (paper), CLIP/SigLIP vision towers."""
from __future__ import annotations

from typing import Any

from pipeline.media.image import decode_image
from pipeline.modalities.base import IMAGE_PIXELS, ModalitySpec, Synthetic, forward_pixels, image_input_spec


def decode(data: bytes, settings: Any):
    """Image bytes → RGB uint8 (H, W, 3), at most twice the encoder's input size."""
    return decode_image(data, settings.limits.max_image_pixels, settings.spec.image_hw)


def forward(encoder: Any, images: list[Any]):
    """RGB uint8 (H, W, 3) arrays → the encoder's processor → hidden (B, patches, D); every patch is valid."""
    return forward_pixels(encoder, encoder.processor(images=images, return_tensors="pt"))


def build_tiny(dest: str) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8)
    ViTModel(cfg).save_pretrained(dest)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(dest)


def build_paper(dest: str) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    ViTModel(ViTConfig()).save_pretrained(dest)  # ViT-B/16 at 224, as google/vit-base-patch16-224
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(dest)



def write_sample(scene: Any, rng: Any, path: str | None) -> None:
    """A generated sample corpus's picture of ``scene``: 96x96, PNG or JPEG by ``path``'s extension."""
    from pipeline.synthetic.draw import draw_shape

    draw_shape(scene.colour, scene.shape, rng=rng).save(path)


def draw_sample(scene: Any, rng: Any):
    """The decoded picture of ``scene``: RGB uint8 (64, 64, 3)."""
    from pipeline.synthetic.draw import pictures

    return pictures(scene, 64, [scene.offset], rng)[0]


SPEC = ModalitySpec(
    name="image", inline=False, reads="bytes", decode=decode, forward=forward, processor="AutoImageProcessor",
    tower="vision", paper_model="google/vit-base-patch16-224", builds={"tiny": build_tiny, "paper": build_paper},
    mime_types=("image/*",), extensions=(".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
    input_spec=image_input_spec, decoded_bytes=lambda spec, limits: 12 * spec.image_hw[0] * spec.image_hw[1],
    limits={"max_image_pixels": IMAGE_PIXELS},
    synthetic=Synthetic(write_sample, draw_sample, folder="images", formats=("png", "jpg")))
