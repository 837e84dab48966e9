"""The pixel budget: an image may not declare more pixels than its bytes can encode.

A 700-byte JPEG whose frame header says 9000 x 9000 decodes (libjpeg only warns about
the missing data) to a grey 81-megapixel image: +470 MB per decode, for a picture of
16 x 16. ``max_pixels`` caps the declared size alone; this caps it by the bytes that
arrived, using the most pixels per byte each codec can possibly encode, so no real
image is refused whatever its content:

- JPEG: every 8 x 8 block of the full-resolution component costs at least one bit
  (its DC code; progressive end-of-band runs make the AC codes nearly free), so at most
  512 pixels per byte;
- PNG: deflate's best ratio is 1032:1 (a 258-byte match in two bits), so the bytes are
  at least the raw scanlines (a filter byte plus ``width * bits / 8`` per row) / 1032;
- GIF: an LZW code (at most 12 bits) stands for at most 4096 pixels, so at most
  4096 pixels per 1.5 bytes; the logical screen counts (decoders allocate all of it).

Measured with Pillow on flat 3000 x 3000 images, the most compressible content there
is (``tests/pipelines/test_pixel_budget.py``): JPEG quality 10, progressive, optimised
Huffman tables 5.9e-3 bytes per pixel (floor 1.95e-3); PNG 1-bit 1.30e-4 (floor 1.21e-4);
GIF 8.7e-4 (floor 3.7e-4). WebP and the rest have no such bound (a one-symbol Huffman
tree codes a pixel in zero bits): ``max_pixels`` alone holds for them.
"""

from __future__ import annotations

import math

JPEG_PIXELS_PER_BYTE = 8 * 64
DEFLATE_MAX_RATIO = 1032
GIF_PIXELS_PER_BYTE = 4096 / 1.5
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel


def holds_pixels(data: bytes, fmt: str | None, width: int, height: int) -> bool:
    """Whether ``data`` (a whole file of format ``fmt``, Pillow's name) has enough bytes
    for the ``width`` x ``height`` it declares; formats without a bound pass."""
    pixels = width * height
    if fmt == "JPEG":
        return len(data) * JPEG_PIXELS_PER_BYTE >= pixels
    if fmt == "GIF":
        return len(data) * GIF_PIXELS_PER_BYTE >= pixels
    if fmt == "PNG" and len(data) >= 26:
        bits = data[24] * PNG_CHANNELS.get(data[25], 1)  # bit depth x samples
        raw = height * (1 + math.ceil(width * bits / 8))
        return len(data) * DEFLATE_MAX_RATIO >= raw
    return True
