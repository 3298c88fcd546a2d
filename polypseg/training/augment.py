"""Augmentation of an image, its polyp mask and the prompt box together.

Geometry and colour come from albumentations; the box is drawn afterwards from the augmented
mask and jittered as an annotator draws it: mostly a little off, sometimes tight, sometimes
loose.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from polypseg.datasets import jitter_box
from polypseg.errors import PromptError
from polypseg.masks import mask_box
from polypseg.prompts import Box


class SpecularHighlights(A.ImageOnlyTransform):
    """White, soft-edged blobs like the light reflections on a wet mucosa."""

    def __init__(self, max_spots: int = 6, p: float = 0.3) -> None:
        super().__init__(p=p)
        self.max_spots = max_spots

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        rng = np.random.default_rng(int(self.py_random.random() * 2**31))
        height, width = img.shape[:2]
        glare = np.zeros((height, width), dtype=np.float32)
        for _ in range(rng.integers(1, self.max_spots + 1)):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(2, max(3, width // 20))), int(rng.integers(2, max(3, height // 20))))
            cv2.ellipse(glare, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        glare = cv2.GaussianBlur(glare, (0, 0), sigmaX=1.5)[:, :, None]
        return (img * (1 - glare) + 255 * glare).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_spots",)


def training_transform(robust: bool = False) -> A.Compose:
    """Geometry and colour for every model; with `robust`, also the degradations of other
    centres' equipment that albumentations has (the shift suite's families: rescaling, heavy
    JPEG, sensor noise, gamma, colour temperature, strong motion blur)."""
    extra = (
        [
            A.Downscale(scale_range=(0.25, 0.6), p=0.2),
            A.ImageCompression(quality_range=(20, 60), p=0.2),
            A.GaussNoise(std_range=(0.03, 0.08), p=0.2),
            A.RandomGamma(gamma_limit=(50, 200), p=0.25),
            A.PlanckianJitter(p=0.25),
            A.MotionBlur(blur_limit=(9, 21), p=0.15),
        ]
        if robust
        else []
    )
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(0.75, 1.25),
                rotate=(-30, 30),
                translate_percent=(-0.05, 0.05),
                border_mode=cv2.BORDER_CONSTANT,
                p=0.7,
            ),
            A.RandomBrightnessContrast(0.25, 0.25, p=0.6),
            A.HueSaturationValue(10, 20, 15, p=0.5),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 9))], p=0.25),
            SpecularHighlights(p=0.3),
            A.ImageCompression(quality_range=(40, 95), p=0.25),
            *extra,
        ]
    )


# The shift families albumentations lacks, written once in polypseg.shifts and used for
# evaluation too: combing from interlaced video, burnt-in text, the black octagonal frame, and
# the frame edge cutting through the polyp.
FRAME_SHIFTS = ("interlace", "text", "octagon", "edge-crop")


def frame_shift(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """With probability `p`, one of FRAME_SHIFTS applied to image and mask together (not one
    that would leave no polyp)."""
    from polypseg.shifts import SHIFTS

    if p <= 0 or rng.random() >= p:
        return image, mask
    shifted, shifted_mask = SHIFTS[str(rng.choice(FRAME_SHIFTS))](image, mask.astype(bool), rng)
    return (shifted, shifted_mask) if shifted_mask.any() else (image, mask)


def camera_view(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """With probability `p`, image and mask as a moving camera sees them (turned, zoomed,
    motion-blurred, relit: `polypseg.video.synthetic.random_camera_move`), not a view that
    loses the polyp."""
    from polypseg.video.synthetic import random_camera_move

    if p <= 0 or rng.random() >= p:
        return image, mask
    moved, moved_mask = random_camera_move(image, mask, rng)
    return (moved, moved_mask) if moved_mask.any() or not mask.any() else (image, mask)


def annotator_box(mask: np.ndarray, rng: np.random.Generator, noise: float = 0.15) -> Box | None:
    """A box as an annotator would draw it around a mask, within the mask's frame: tight (20%),
    loose (15%), or each side off by up to `noise` of the box size; None for an empty mask."""
    box = mask_box(mask)
    if box is None:
        return None
    height, width = mask.shape
    roll = rng.random()
    if roll < 0.2:
        return box
    if roll < 0.35:
        return box.expanded(rng.uniform(0.05, 0.3) / 2, width, height)
    try:
        return jitter_box(box, noise, rng).clipped(width, height)
    except PromptError:  # a sliver at the frame's edge, jittered out of it: the tight box
        return box
