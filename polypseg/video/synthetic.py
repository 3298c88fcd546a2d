"""Video sequences with a true mask on every frame, made from still images.

A still frame and its mask are moved along a smooth random camera path (shift, zoom,
rotation), blurred in proportion to the motion and relit, with the same warp applied to the
mask. Polyp videos with per-frame masks are not public; these let trackers be scored.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from polypseg.datasets import PolypSample, polyp_targets
from polypseg.images import read_image, read_mask, write_mask
from polypseg.shifts import blur_along


def smooth_path(length: int, rng: np.random.Generator, amplitude: float, knots: int = 4) -> np.ndarray:
    """A smooth random curve of `length` values within about +-amplitude, starting at 0."""
    points = rng.uniform(-amplitude, amplitude, size=knots + 1)
    points[0] = 0.0
    curve = np.interp(np.linspace(0, knots, length), np.arange(knots + 1), points)
    kernel = np.hanning(max(3, length // knots)) / np.hanning(max(3, length // knots)).sum()
    smoothed = np.convolve(np.pad(curve, len(kernel), mode="edge"), kernel, mode="same")[
        len(kernel) : -len(kernel)
    ]
    return smoothed - smoothed[0]


def synthetic_sequence(
    image: np.ndarray, mask: np.ndarray, length: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`length` (frame, mask) pairs along one random camera path; frame 0 is the still itself."""
    height, width = mask.shape
    shift_x = smooth_path(length, rng, 0.2 * width)
    shift_y = smooth_path(length, rng, 0.2 * height)
    zoom = np.exp(smooth_path(length, rng, 0.35))
    angle = smooth_path(length, rng, 20.0)
    light = smooth_path(length, rng, 0.25)
    for t in range(length):
        motion = (shift_x[t] - shift_x[t - 1], shift_y[t] - shift_y[t - 1]) if t else (0.0, 0.0)
        yield camera_move(
            image, mask, (shift_x[t], shift_y[t]), float(zoom[t]), float(angle[t]), float(light[t]), motion
        )


def camera_move(
    image: np.ndarray,
    mask: np.ndarray,
    shift: tuple[float, float],
    zoom: float,
    angle: float,
    light: float,
    motion: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """The frame and mask as a camera moved by `shift` (pixels), `zoom` and `angle` (degrees,
    about the centre) sees them, blurred along its `motion` since the last frame (pixels) and
    relit by 1 + `light`. Parts that come into view are black."""
    height, width = mask.shape
    matrix = np.asarray(cv2.getRotationMatrix2D((width / 2, height / 2), angle, zoom), dtype=np.float64)
    matrix[:, 2] += shift
    frame = cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    warped = cv2.warpAffine(mask.astype(np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST) > 0
    frame = _motion_blur(frame, motion)
    return np.clip(frame.astype(np.float32) * (1 + light), 0, 255).astype(np.uint8), warped


def random_camera_move(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One frame of a moving camera, its pose and motion drawn from the ranges of
    `synthetic_sequence`'s paths (shift of up to 10% of the frame here, since the frame is
    often a region around the polyp): a training augmentation for what trackers see."""
    height, width = mask.shape
    speed, direction = rng.uniform(0, 0.05) * max(height, width), rng.uniform(-np.pi, np.pi)
    return camera_move(
        image,
        mask,
        (rng.uniform(-0.1, 0.1) * width, rng.uniform(-0.1, 0.1) * height),
        float(np.exp(rng.uniform(-0.35, 0.35))),
        rng.uniform(-20.0, 20.0),
        rng.uniform(-0.25, 0.25),
        (speed * np.cos(direction), speed * np.sin(direction)),
    )


def _motion_blur(frame: np.ndarray, motion: tuple[float, float]) -> np.ndarray:
    """The frame smeared along `motion` (pixels, x right and y down): a line kernel of odd
    length, so it is centred on its anchor and the frame stays aligned with its mask."""
    length = 2 * int(round(float(np.hypot(*motion)) / 2)) + 1
    if length < 3:
        return frame
    # blur_along turns counter-clockwise as seen on screen (y down), atan2 clockwise.
    return blur_along(frame, length, -float(np.degrees(np.arctan2(motion[1], motion[0]))))


def sample_sequence(
    sample: PolypSample, length: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The sample's sequence in a run seeded `seed`: its largest polyp (a tracker follows one
    object) along a camera path drawn from the seed and the sample's name, so a still's
    sequence is the same whichever other stills are made with it."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode())])
    image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
    mask = max((target for _, target in polyp_targets(mask, None)), key=np.count_nonzero, default=mask)
    return synthetic_sequence(image, mask, length, rng)


def write_sequences(samples: list[PolypSample], out: Path, length: int, seed: int = 0) -> list[Path]:
    """One sequence folder per sample: `frames/NNNNN.jpg` and `masks/NNNNN.png`."""
    folders = []
    for sample in tqdm(samples, desc="making sequences", unit="sequence"):
        folder = out / sample.name
        (folder / "frames").mkdir(parents=True, exist_ok=True)
        for t, (frame, truth) in enumerate(sample_sequence(sample, length, seed)):
            Image.fromarray(frame).save(folder / "frames" / f"{t:05d}.jpg", quality=92)  # raises if it cannot
            write_mask(folder / "masks" / f"{t:05d}.png", truth)
        folders.append(folder)
    return folders
