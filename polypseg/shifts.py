"""Named, seeded corruptions of a frame as other centres' equipment produces them, for
measuring how a model holds up: each takes an RGB image and its polyp mask and returns both,
with any change of geometry applied to the mask too (photometric shifts leave the mask as it
is). The same name, seed and image always give the same result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import cv2
import numpy as np

from polypseg.errors import PolypsegError
from polypseg.masks import mask_box

Shift = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _rescaled(factor: float) -> Shift:
    def shift(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = mask.shape
        small = cv2.resize(
            image,
            (max(1, round(width * factor)), max(1, round(height * factor))),
            interpolation=cv2.INTER_AREA,
        )
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR), mask

    return shift


def jpeg(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    quality = int(rng.integers(20, 41))
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert ok and decoded is not None
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), mask


def interlace(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Combing: the odd lines come from a field taken a moment later (the scene moved sideways)."""
    offset = int(rng.integers(3, 9)) * int(rng.choice([-1, 1]))
    out = image.copy()
    out[1::2] = np.roll(image, offset, axis=1)[1::2]
    return out, mask


def colour_temperature(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    warm = rng.uniform(-0.25, 0.25)
    gains = np.array([1 + warm, 1.0, 1 - warm], dtype=np.float32)
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8), mask


def hue(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(8, 19)) * int(rng.choice([-1, 1]))) % 180
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB), mask


def gamma(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    value = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    table = (255 * (np.arange(256) / 255) ** value).astype(np.uint8)
    return table[image], mask


def noise(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    sigma = rng.uniform(8, 20)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8), mask


def blur_along(image: np.ndarray, length: int, degrees: float) -> np.ndarray:
    """The image smeared along a line `length` pixels long (odd, so the kernel is centred on its
    anchor and the image stays aligned with its mask), turned `degrees` counter-clockwise from
    the x axis as seen on screen."""
    if length % 2 == 0:
        raise ValueError(f"a blur line of even length {length} would shift the image half a pixel")
    line = np.zeros((length, length), np.float32)
    line[length // 2] = 1.0
    rotation = cv2.getRotationMatrix2D((length // 2, length // 2), degrees, 1.0)
    kernel = np.asarray(cv2.warpAffine(line, rotation, (length, length)), dtype=np.float32)
    return cv2.filter2D(image, -1, kernel / max(float(kernel.sum()), 1e-6))


def motion_blur(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    length = int(rng.integers(9, 22)) | 1
    return blur_along(image, length, float(rng.uniform(0, 180))), mask


def specular(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = mask.shape
    glare = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(3, max(4, width // 15))), int(rng.integers(3, max(4, height // 15))))
        cv2.ellipse(glare, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    glare = cv2.GaussianBlur(glare, (0, 0), sigmaX=2.0)[..., None]
    return (image * (1 - glare) + 255 * glare).astype(np.uint8), mask


def octagon(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The black octagonal frame of many endoscopes: corners cut off, polyp included."""
    height, width = mask.shape
    cut = int(min(height, width) * rng.uniform(0.15, 0.3))
    corners = np.array(
        [[cut, 0], [width - cut, 0], [width, cut], [width, height - cut], [width - cut, height],
         [cut, height], [0, height - cut], [0, cut]], np.int32
    )  # fmt: skip
    keep = np.zeros((height, width), np.uint8)
    cv2.fillPoly(keep, [corners], 1)
    return image * keep[..., None], mask & keep.astype(bool)


def square_pad(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Frames padded to a square with black bars (letterboxing), then resized, as recorders store them."""
    height, width = mask.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    size = int(rng.choice([384, 512, 640]))
    padded = np.zeros((side, side, 3), np.uint8)
    padded[top : top + height, left : left + width] = image
    padded_mask = np.zeros((side, side), np.uint8)
    padded_mask[top : top + height, left : left + width] = mask
    resized = cv2.resize(padded, (size, size), interpolation=cv2.INTER_AREA)
    return resized, cv2.resize(padded_mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0


def text(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Burnt-in date, time and patient fields, as video processors print them."""
    height, width = mask.shape
    out = np.ascontiguousarray(image.copy())
    scale = max(0.4, width / 900)
    for line in range(int(rng.integers(2, 6))):
        date = f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/20{rng.integers(10, 26)}"
        words = f"{date} ID:{rng.integers(100_000, 1_000_000)}"
        x = int(rng.uniform(0, 0.5) * width)
        y = int((0.08 + 0.07 * line + rng.uniform(0, 0.6) * (line % 2)) * height)
        cv2.putText(
            out, words, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale))
        )
    return out, mask


def edge_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The frame ends inside the polyp: a crop through its box cuts 25-50% of it off."""
    box = mask_box(mask)
    if box is None:
        return image, mask
    side = int(rng.integers(4))
    part = rng.uniform(0.25, 0.5)
    x1, y1, x2, y2 = 0, 0, mask.shape[1], mask.shape[0]
    if side == 0:
        x1 = int(box.x1 + part * box.width)
    elif side == 1:
        x2 = int(box.x2 - part * box.width)
    elif side == 2:
        y1 = int(box.y1 + part * box.height)
    else:
        y2 = int(box.y2 - part * box.height)
    return np.ascontiguousarray(image[y1:y2, x1:x2]), np.ascontiguousarray(mask[y1:y2, x1:x2])


SHIFTS: dict[str, Shift] = {
    "downscale-0.5": _rescaled(0.5),
    "downscale-0.25": _rescaled(0.25),
    "jpeg": jpeg,
    "interlace": interlace,
    "colour-temperature": colour_temperature,
    "hue": hue,
    "gamma": gamma,
    "noise": noise,
    "motion-blur": motion_blur,
    "specular": specular,
    "octagon": octagon,
    "square-pad": square_pad,
    "text": text,
    "edge-crop": edge_crop,
}
GEOMETRIC = {"octagon", "square-pad", "edge-crop"}


def shift_names(spec: str) -> list[str]:
    """`all`, or comma-separated names; unknown names are refused with the list of known ones."""
    names = list(SHIFTS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHIFTS]
    if unknown or not names:
        raise PolypsegError(f"unknown shift {', '.join(unknown) or spec!r}; known: {', '.join(SHIFTS)}, all")
    return names


def apply_shift(
    name: str, image: np.ndarray, mask: np.ndarray, key: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Shift `name` applied to one image (identified by `key`), reproducibly."""
    digest = hashlib.sha256(f"{name}/{key}".encode()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    return SHIFTS[name](image, mask.astype(bool), rng)
