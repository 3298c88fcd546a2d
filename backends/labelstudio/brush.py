"""Label Studio's brush RLE, through label-studio-sdk's own converter.

The SDK's encoder is the reference the Label Studio front end decodes; using it keeps the
bytes identical. It is imported on first use: the import costs most of a second.
"""

from __future__ import annotations

import numpy as np


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """A bool mask (H, W) as Label Studio brush RLE (RGBA runs, the mask as 255)."""
    from label_studio_sdk.converter.brush import mask2rle

    return list(mask2rle(mask.astype(np.uint8) * 255))


def decode_brush_rle(rle: list[int], width: int, height: int) -> np.ndarray:
    """Label Studio brush RLE back to a bool mask (H, W)."""
    from label_studio_sdk.converter.brush import decode_rle

    flat = decode_rle(rle)
    if flat.size != width * height * 4:
        raise ValueError(f"brush RLE holds {flat.size // 4} pixels, not {width}x{height}")
    return flat.reshape(height, width, 4)[:, :, 3] > 127
