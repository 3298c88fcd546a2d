"""Image/mask folder datasets with one prompt box per polyp.

Boxes come from a Kvasir-SEG style `bboxes.json` (`{name: {"bbox": [{xmin, ymin, xmax,
ymax}, ...]}}`) where there is one, else from the mask's connected components.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from polypseg.errors import DatasetError, PromptError
from polypseg.masks import component_boxes, is_sliver
from polypseg.prompts import Box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class PolypSample:
    name: str
    image_path: Path
    mask_path: Path
    boxes: tuple[Box, ...] | None  # None: take them from the mask


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def read_boxes_json(path: Path) -> dict[str, tuple[Box, ...]]:
    """Boxes per image name from a Kvasir-SEG `bboxes.json`."""
    try:
        content = json.loads(Path(path).read_text())
        return {
            Path(name).stem: tuple(
                Box(float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"]))
                for b in entry["bbox"]
            )
            for name, entry in content.items()
        }
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such boxes file") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a bboxes.json of the Kvasir-SEG form ({exc!r})") from None


def load_folder_dataset(
    images: Path, masks: Path, boxes_json: Path | None = None, names: list[str] | None = None
) -> list[PolypSample]:
    """Pair images and masks by file name (without suffix); optionally only `names`."""
    image_files, mask_files = _files_by_stem(Path(images)), _files_by_stem(Path(masks))
    boxes = read_boxes_json(boxes_json) if boxes_json else {}
    stems = sorted(set(image_files) & set(mask_files))
    if names is not None:
        missing = sorted(set(names) - set(stems))
        if missing:
            raise DatasetError(f"{len(missing)} listed images have no image/mask pair, e.g. {missing[0]}")
        stems = [s for s in stems if s in set(names)]
    if not stems:
        raise DatasetError(f"no image in {images} has a mask of the same name in {masks}")
    return [
        PolypSample(s, image_files[s], mask_files[s], boxes.get(s) if boxes_json else None) for s in stems
    ]


def polyp_targets(mask: np.ndarray, boxes: tuple[Box, ...] | None) -> list[tuple[Box, np.ndarray]]:
    """Each polyp's box and its own mask (other polyps excluded).

    With given boxes, a polyp is the mask components that lie mostly inside its box; without,
    each connected component is one polyp. Either way a box too narrow to hold a polyp (a strip
    1-3 pixels wide left by an annotation tool: `is_sliver`) is no polyp.
    """
    if boxes is None:
        labels, _ = ndimage.label(mask)
        return [(box, _components_in(labels, box)) for box in component_boxes(mask)]
    labels, _ = ndimage.label(mask)
    height, width = mask.shape
    try:  # a box reaching past the frame (xmin -2) would otherwise slice from the far side
        inside = [box.clipped(width, height) for box in boxes]
    except PromptError as exc:
        raise DatasetError(str(exc)) from None  # "box (...) lies outside the WxH image"
    return [(box, _components_in(labels, box)) for box in inside if not is_sliver(box)]


def _components_in(labels: np.ndarray, box: Box) -> np.ndarray:
    """The components with at least half their area inside the box (or, failing that, the
    mask clipped to the box)."""
    x1, y1, x2, y2 = int(box.x1), int(box.y1), int(np.ceil(box.x2)), int(np.ceil(box.y2))
    inside = np.bincount(labels[y1:y2, x1:x2].ravel(), minlength=labels.max() + 1)
    total = np.bincount(labels.ravel(), minlength=labels.max() + 1)
    chosen = (inside * 2 >= total) & (inside > 0)
    chosen[0] = False
    if chosen.any():
        return chosen[labels]
    clipped = np.zeros(labels.shape, dtype=bool)
    clipped[y1:y2, x1:x2] = labels[y1:y2, x1:x2] > 0
    return clipped


def jitter_box(box: Box, noise: float, rng: np.random.Generator) -> Box:
    """Move each side by up to `noise` of the box's width or height, as a hurried annotator."""
    if noise <= 0:
        return box
    dx1, dy1, dx2, dy2 = rng.uniform(-noise, noise, size=4)
    moved = Box(
        box.x1 + dx1 * box.width,
        box.y1 + dy1 * box.height,
        box.x2 + dx2 * box.width,
        box.y2 + dy2 * box.height,
    )
    return moved if moved.width >= 1 and moved.height >= 1 else box


def seeded_rng(name: str, seed: int) -> np.random.Generator:
    """A generator fixed by an image's name and a seed, whatever order images come in."""
    return np.random.default_rng([zlib.crc32(name.encode()), seed])
