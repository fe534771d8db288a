"""What one request may cost (``ServeLimits.max_request_*``), held before any of its items is decoded.

Small files can decode to much: a 40 MP lossless WebP of one colour is 38 bytes and a second of decoding, so
64 of them in one request were a minute of encoder CPU. Pixels are known from headers, so the Gateway sums them
exactly (``request_budget``); a clip's length is known only once demuxed, so each audio/video item gets its share
of the request's seconds as its own limit, which its decoder enforces (``pipeline.item_encoder``).
"""
from __future__ import annotations

import io
import re
import struct

from pipeline import modalities as registry
from serving.config import SHARED_BUDGETS, ServeLimits
from serving.inputs import APIError, Item

PIXELS = "max_image_pixels"  # the per-item limit of the modalities whose pixels max_request_pixels sums
# Pillow walks a header in Python, a chunk or marker at a time: given at most this much of a file (formats other than
# PNG, JPEG and TIFF, whose headers are read here, have theirs in their first bytes), a header padded with a million
# empty chunks costs the Gateway milliseconds, not seconds
HEADER_BYTES = 16 * 1024
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG frame headers (not DHT, JPG, DAC)
_FILL = re.compile(rb"\xff+")


def _larger(best: tuple[int, int] | None, size: tuple[int, int]) -> tuple[int, int]:
    return size if best is None or size[0] * size[1] > best[0] * best[1] else best


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the largest IHDR before a PNG's image data, found by skipping whole chunks (Pillow takes
    the last; the largest is never less); None where 256 chunks do not get there."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, best = 8, None
    for _ in range(256):
        if pos + 8 > len(data):
            return None
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind in (b"IDAT", b"fdAT"):
            return best
        if kind == b"IHDR":
            best = _larger(best, struct.unpack_from(">II", data, pos + 8))
        pos += 12 + length
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the largest frame header (SOFn) before a JPEG's first scan, found by skipping whole
    segments (a camera's EXIF, ICC and XMP take a few steps, however large; Pillow takes the last frame header, the
    largest is never less); None where 256 segments do not get there or anything is unusual (left to Pillow)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, best = 2, None
    for _ in range(256):
        if data[pos:pos + 1] != b"\xff":
            return None
        pos = _FILL.match(data, pos).end()
        if pos + 8 > len(data):
            return None
        marker, pos = data[pos], pos + 1
        if marker == 0xDA:  # start of scan: the header ends
            return best
        if 0xD0 <= marker <= 0xD9:  # restart markers, start and end of image: no length
            continue
        if marker < 0xC0:  # a stuffed 0xFF00, reserved markers
            return None
        if marker in _SOF:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            best = _larger(best, (width, height))
        pos += struct.unpack_from(">H", data, pos)[0]
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first directory of a TIFF, wherever in the file it lies (the largest of each if
    given twice; Pillow takes the last); None unless both are there as SHORT or LONG."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if order is None:
        return None
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    size = {256: 0, 257: 0}  # ImageWidth, ImageLength
    for tag, kind, _, value in struct.iter_unpack(order + "HHI4s", data[offset + 2:offset + 2 + 12 * count]):
        if tag in size and kind in (3, 4):  # SHORT, LONG: left-justified in the entry
            size[tag] = max(size[tag], struct.unpack_from(order + ("H" if kind == 3 else "I"), value)[0])
    return (size[256], size[257]) if size[256] and size[257] else None


def media_pixels(data: bytes, unknown: int) -> int:
    """Pixels (width*height) an image or depth map decodes to, from its header alone, in bounded time: PNG, JPEG
    and TIFF headers read here, a .npy header as the depth decoder reads it, the rest by Pillow (which opens
    lazily) from the first HEADER_BYTES. 0 for bytes that are no picture its decoders open (they refuse them as
    cheaply); ``unknown`` (the most a decoder accepts) where the size is not found in what is read."""
    from PIL import Image

    from pipeline.media.image import FORMATS  # a superset of the depth maps' formats

    for read in (_png_size, _jpeg_size, _tiff_size):
        try:
            size = read(data)
        except struct.error:  # truncated: Pillow says more below
            size = None
        if size:
            return size[0] * size[1]
    if data[:3] == b"\xff\xd8\xff":  # a JPEG whose frame header is not within 256 segments: Pillow would walk the
        return unknown                 # same markers one by one in Python (0.5 s a MB of them), so it counts as the most
    try:
        if data[:6] == b"\x93NUMPY":
            import numpy as np

            buf = io.BytesIO(data)
            read_header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(buf) == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(buf)[0]
            return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0
        with Image.open(io.BytesIO(data[:HEADER_BYTES]), formats=FORMATS) as img:
            return img.width * img.height
    except Exception:  # hostile headers raise all sorts; the item's decoder says what is wrong with it
        return 0 if len(data) <= HEADER_BYTES else unknown


def request_budget(items: list[Item], limits: ServeLimits) -> list[dict[str, float]]:
    """Hold a request to its budgets before any of its items is decoded; per item, the limits it is decoded with
    where they are tighter than the server's (else {}).

    Its images' and depth maps' pixels, read from their headers, must sum to at most ``max_request_pixels`` (else
    400, naming the total). A clip's length is known only once demuxed, so each of the n items with a per-item
    duration limit (``SHARED_BUDGETS``) gets min(that limit, budget / n) as its own: the request's total can never
    exceed the budget, and a longer item is refused before its frames are decoded. Reads up to ``max_items``
    headers: run it off the event loop."""
    specs = [registry.get(it.modality).limits for it in items]
    pictures = [it for it, spec in zip(items, specs) if PIXELS in spec]
    most = limits.max_image_pixels  # a larger one is refused by its decoder before decoding: it costs no more
    total = sum(min(media_pixels(it.value, most), most) for it in pictures)
    if total > limits.max_request_pixels:
        kinds = " and ".join(sorted({it.modality for it in pictures}))
        raise APIError(400, f"the request's {len(pictures)} {kinds} inputs decode to {total:,} pixels in all (width*height, "
                            f"from their headers), over limits.max_request_pixels={limits.max_request_pixels:,} per "
                            "request: send fewer or smaller images per request", "request_over_budget", "input")
    shares: list[dict[str, float]] = [{} for _ in items]
    for field, budget in SHARED_BUDGETS.items():
        sharing = [k for k, spec in enumerate(specs) if field in spec]
        share = getattr(limits, budget) / max(len(sharing), 1)
        if share < getattr(limits, field):
            for k in sharing:
                shares[k][field] = share
    return shares


def explain_share(reason: str, share: dict[str, float], items: list[Item], limits: ServeLimits) -> str:
    """A decoder's ``reason`` for refusing an item, with where its limit came from when it names the item's share
    of a request budget (``request_budget``)."""
    for field, value in share.items():
        if f"limits.{field}=" in reason:
            budget = SHARED_BUDGETS[field]
            sharing = [it for it in items if field in registry.get(it.modality).limits]
            kinds = " and ".join(sorted({it.modality for it in sharing}))
            return (f"{reason}: this item's share of limits.{budget}={getattr(limits, budget):g} s, split between the "
                    f"request's {len(sharing)} {kinds} items ({value:g} s each; limits.{field}="
                    f"{getattr(limits, field):g} s is for an item alone): send fewer or shorter {kinds} items per request")
    return reason
