"""Image decoding with Pillow: RGB, EXIF orientation, pixel limit, bounded size."""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.media.errors import DecodeError

# the Pillow formats an image may be read as: never EPS/PS (Pillow hands those to Ghostscript) nor
# the long tail of legacy formats nobody sends us (JPEG includes the MPO files of many cameras)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ORIENTATION = 0x0112  # the EXIF tag saying how to turn the picture upright


def decode_image(data: bytes, max_pixels: int, target_hw: tuple[int, int]) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array (H, W, 3), upright per EXIF.

    Images much larger than the encoder's input (``target_hw``) are shrunk, keeping aspect, to at
    most twice that size: the encoder's processor does the exact resize/crop, this only keeps the
    array small on its way through the object store. Raises DecodeError.
    """
    if not data:
        raise DecodeError("empty file (0 bytes): expected an image")
    with pillow_errors("image", "not an image format we accept: expected JPEG, PNG, WebP, GIF, BMP or TIFF "
                                "(EPS/PostScript and other formats are refused)"):
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        check_pixels("image", img.width, img.height, max_pixels)
        bound = (2 * target_hw[1], 2 * target_hw[0])
        img.draft("RGB", bound)  # JPEG: decode at reduced scale when much larger than needed
        img.load()
        if img.getexif().get(ORIENTATION, 1) != 1:  # most images need no turn: no copy for them
            img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.width > bound[0] or img.height > bound[1]:
            img.thumbnail(bound, Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def check_pixels(what: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse a picture of more than ``max_pixels`` before its pixels are decoded (decompression bombs)."""
    if width * height > max_pixels:
        raise DecodeError(f"{what} is {width}x{height} = {width * height} pixels, over limits.max_image_pixels={max_pixels}")


@contextlib.contextmanager
def pillow_errors(what: str, unidentified: str) -> Iterator[None]:
    """Pillow's ways of saying bytes are not a picture it may open, as DecodeErrors naming ``what``
    (``unidentified``: the message for a format outside the allowed ones)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(unidentified) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb refused: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow reports truncation/corruption as these
        raise DecodeError(f"corrupt or truncated {what}: {type(e).__name__}: {e}") from None
