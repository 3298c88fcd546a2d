"""Reading images and masks into the one form the core works on.

Images become RGB uint8 arrays (H, W, 3) whatever they were on disk: grayscale, palette, RGBA,
16-bit. Masks become bool arrays (H, W), thresholded at 127 as polyp datasets store them
(0/1 and palette masks are read as what they label; see `read_mask`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from polypseg.atomic import write_atomic
from polypseg.environment import Environment
from polypseg.errors import InputImageError

# A 4K endoscopy frame has 8.3 MP; 50 MP leaves room while refusing decompression bombs.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def image_pixel_limit(env: Environment) -> int:
    """POLYPSEG_MAX_IMAGE_PIXELS, else 50 MP."""
    return env.integer("POLYPSEG_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1)


@functools.cache
def max_image_pixels() -> int:
    """The process's limit, read at first use (a server checks it at start)."""
    return image_pixel_limit(Environment())


ImageSource = str | os.PathLike[str] | bytes


def _open(source: ImageSource) -> tuple[Image.Image, str]:
    name = "image bytes" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise InputImageError(f"{name}: no such file") from None
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours by default
        raise InputImageError(f"{name}: larger than Pillow will open ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputImageError(f"{name}: not a readable image ({exc})") from None
    limit = max_image_pixels()
    if image.width * image.height > limit:
        raise InputImageError(
            f"{name}: {image.width}x{image.height} is larger than the limit of "
            f"{limit} pixels (set POLYPSEG_MAX_IMAGE_PIXELS to raise it)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{name}: image data is truncated or corrupt ({exc})") from None
    return image, name


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16- or 32-bit array to 0-255 by its type's range (or its own maximum)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    top = 65535 if array.max(initial=0) > 255 else 255
    return np.clip(array.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)


def as_rgb(array: np.ndarray) -> np.ndarray:
    """Any H x W [x C] array as RGB uint8: gray is repeated, alpha dropped, 16-bit scaled."""
    array = _to_uint8(np.asarray(array))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise InputImageError(f"an image must be H x W x 3 (RGB), got shape {array.shape}")
    return np.ascontiguousarray(array)


def read_image(source: ImageSource) -> np.ndarray:
    """Read an image file (or its bytes) as RGB uint8 (H, W, 3)."""
    image, _ = _open(source)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return as_rgb(np.array(image))
    if image.mode != "RGB":
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    return as_rgb(np.array(image))


def read_mask(source: ImageSource) -> np.ndarray:
    """Read a mask image as bool (H, W). The polyp is: in a label map (a palette image whose
    index 0 is black, a few indices used), every index but 0, whatever its colour; in a mask of
    only 0 and 1, the 1s; otherwise, other palette images included, the pixels brighter than
    127 in any colour channel (0/255 masks, masks drawn in a colour, and JPEG masks whose
    values blur around those)."""
    image, _ = _open(source)
    array = np.asarray(image)
    if image.mode == "P":
        if _is_label_map(image, array):
            return array != 0
        array = np.asarray(image.convert("L"))
    if array.ndim == 3:  # a colour mask: the polyp in any colour (not only red, nor alpha)
        array = array[:, :, :3].max(axis=2)
    if array.max(initial=0) <= 1:
        return array > 0
    return _to_uint8(array) > 127


LABEL_MAP_INDICES = 16  # a palette image using more indices than this is a picture, not labels


def _is_label_map(image: Image.Image, array: np.ndarray) -> bool:
    """Index 0 black, a few indices used, and not a grey picture kept as a palette (whose
    index i is the grey i, as Pillow converts one)."""
    palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
    used = np.unique(array)
    grey_ramp = all(used < len(palette)) and all((palette[used] == used[:, None]).all(axis=1))
    return (palette[0] == 0).all() and len(used) <= LABEL_MAP_INDICES and not grey_ramp


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit PNG (0 and 255), whatever the name's suffix, creating the
    folder; a reader never sees half a file."""
    write_image(path, mask.astype(np.uint8) * 255, "PNG")


def write_image(path: str | os.PathLike[str], pixels: np.ndarray, format: str, **options: int) -> None:
    """Write pixels in `format` (PNG, JPEG) atomically, creating the folder."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **options)
    write_atomic(path, buffer.getvalue())


def image_digest(image: np.ndarray) -> str:
    """A content hash of the pixels and shape: the cache key of an image."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()
