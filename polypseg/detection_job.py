"""Detection jobs on folders, image lists and videos: detect (and refine into masks), score
against true masks, rank by uncertainty. Frames stream one at a time: a folder of thousands of
frames or a long video is never held in memory.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from polypseg.datasets import IMAGE_SUFFIXES, PolypSample, polyp_targets
from polypseg.detection_metrics import (
    ImageDetections,
    average_precision,
    coco_average_precision,
    precision_recall,
    recall_at_precision,
)
from polypseg.detector import OVERLAP_IOU, Detection, PolypDetector
from polypseg.errors import CheckpointError, InputImageError, PolypsegError
from polypseg.images import read_image, read_mask, write_image, write_mask
from polypseg.masks import mask_box
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Box, Prompt

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = Path(__file__).resolve().parent / "models" / "detector.pt"


def default_detector_checkpoint() -> Path:
    """The shipped detector, or the file named by POLYPSEG_DETECTOR."""
    return Path(os.environ.get("POLYPSEG_DETECTOR", DEFAULT_DETECTOR))


def build_detector(
    checkpoint: str | os.PathLike[str] | None = None, device: str | None = None
) -> PolypDetector:
    from polypseg.checkpoints import load_checkpoint
    from polypseg.families import family_of
    from polypseg.predictors.registry import resolve_device

    path = Path(checkpoint) if checkpoint is not None else default_detector_checkpoint()
    state, metadata, _ = load_checkpoint(path)
    found = family_of(state, metadata, path)
    if found.task != "detect":
        raise CheckpointError(f"{path}: holds a {found.name} model, not a polyp detector")
    detector: PolypDetector = found.load(state, metadata, str(path), device=resolve_device(device))
    return detector


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Image files named directly, and those in named folders (sorted), in the given order; two
    of one name (without suffix) are an error, as their outputs would overwrite each other."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputImageError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputImageError(f"{path}: no such file or folder")
    first: dict[str, Path] = {}
    for file in files:  # the JSON names images, and masks and overlays are written, by name
        other = first.setdefault(file.stem, file)
        if other != file:
            raise InputImageError(
                f"{other} and {file} share the name {file.stem!r}: detect them in separate runs"
            )
    return files


@dataclass
class DetectedFrame:
    """One image's (or video frame's) detections and, refined, their union mask."""

    key: dict[str, Any]  # {"image": name} or {"frame": n}
    detections: list[Detection]
    mask: np.ndarray | None = None
    uncertainty: float | None = None

    def as_dict(self) -> dict[str, Any]:
        body = {**self.key, "detections": [d.as_dict() for d in self.detections]}
        if self.uncertainty is not None:
            body["uncertainty"] = self.uncertainty
        return body


@dataclass
class FoundPolyp:
    """A detection and the box model's outline of it."""

    detection: Detection
    mask: np.ndarray
    confidence: float  # the box model's confidence in the mask


@dataclass
class FoundPolyps:
    polyps: list[FoundPolyp]  # best detection first; detections outlined as nothing are left out
    uncertainty: float  # the detector's about the whole frame (its uncertainty_measure)


def outline(predictor: ImagePredictor, image: np.ndarray, detections: list[Detection]) -> list[FoundPolyp]:
    """Each detection outlined by the box model from its box, best first. A detection outlined
    as nothing is dropped, and so is one whose outline's box overlaps a better one's by
    `OVERLAP_IOU` or more: two boxes on one polyp, however far apart their edges, outline it
    alike (docs/models.md: on the validation images, the most recall at precision 0.85 rose
    under 9 of the 14 shifts and fell under none)."""
    if not detections:
        return []
    prepared = predictor.prepare(image)
    found: list[FoundPolyp] = []
    outlines: list[Box] = []
    for detection in sorted(detections, key=lambda d: -d.score):
        prediction = predictor.segment(prepared, Prompt(box=detection.box))
        box = mask_box(prediction.mask)
        if box is not None and all(box.iou(other) < OVERLAP_IOU for other in outlines):
            found.append(FoundPolyp(detection, prediction.mask, prediction.score))
            outlines.append(box)
    return found


def find_polyps(
    detector: PolypDetector, predictor: ImagePredictor, image: np.ndarray, min_score: float | None = None
) -> FoundPolyps:
    """Every polyp the detector finds on a frame (scoring at least `min_score`, default its own
    floor), outlined: what pre-annotation puts on a frame before anyone draws."""
    detections, uncertainty = detector.find(image, min_score)
    return FoundPolyps(outline(predictor, image, detections), uncertainty)


def union_mask(shape: tuple[int, ...], polyps: list[FoundPolyp]) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    for polyp in polyps:
        mask |= polyp.mask
    return mask


def detect_frame(
    detector: PolypDetector,
    predictor: ImagePredictor,
    image: np.ndarray,
    key: dict[str, Any],
    min_score: float | None,
) -> DetectedFrame:
    """A frame's polyps (`find_polyps`): the detections kept, and their outlines as one mask."""
    found = find_polyps(detector, predictor, image, min_score)
    detections = [polyp.detection for polyp in found.polyps]
    return DetectedFrame(key, detections, union_mask(image.shape, found.polyps), found.uncertainty)


@dataclass
class DetectionRun:
    frames: list[DetectedFrame] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def detect_images(
    detector: PolypDetector,
    predictor: ImagePredictor,
    files: Sequence[Path],
    min_score: float | None = None,
    masks: Path | None = None,
    overlays: Path | None = None,
) -> DetectionRun:
    """Detect in each file; an unreadable one is skipped, logged and counted."""
    run = DetectionRun()
    for path in tqdm(files, desc="detecting", unit="image"):
        try:
            image = read_image(path)
        except InputImageError as exc:
            log.warning("skipped %s", exc)
            run.skipped.append(path.name)
            continue
        frame = detect_frame(detector, predictor, image, {"image": path.name}, min_score)
        _write(frame, image, path.stem, masks, overlays)
        frame.mask = None  # written; a long run keeps only the boxes
        run.frames.append(frame)
    return run


def detect_video(
    detector: PolypDetector,
    predictor: ImagePredictor,
    video: Path,
    min_score: float | None = None,
    masks: Path | None = None,
    overlays: Path | None = None,
) -> DetectionRun:
    from polypseg.video.frames import open_frames

    source = open_frames(video)
    run = DetectionRun()
    for index, image in tqdm(source.frames(0), total=source.info.frame_count, desc="detecting", unit="frame"):
        frame = detect_frame(detector, predictor, image, {"frame": index}, min_score)
        _write(frame, image, f"frame_{index:06d}", masks, overlays)
        frame.mask = None
        run.frames.append(frame)
    return run


def _write(
    frame: DetectedFrame, image: np.ndarray, stem: str, masks: Path | None, overlays: Path | None
) -> None:
    if masks is not None and frame.mask is not None:
        write_mask(masks / f"{stem}.png", frame.mask)
    if overlays is not None:
        import cv2

        from polypseg.masks import draw_overlay

        shown = draw_overlay(image, frame.mask if frame.mask is not None else np.zeros(image.shape[:2], bool))
        for d in frame.detections:
            b = d.box
            cv2.rectangle(shown, (int(b.x1), int(b.y1)), (int(b.x2) - 1, int(b.y2) - 1), (255, 255, 0), 2)
            cv2.putText(
                shown,
                f"{d.score:.2f}",
                (int(b.x1), max(12, int(b.y1) - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (255, 255, 0),
                1,
            )
        write_image(overlays / f"{stem}.jpg", shown, "JPEG", quality=90)


@dataclass
class DetectionScores:
    """Detection and detect-then-refine scores on a labelled dataset."""

    images: list[ImageDetections]
    polyp_ious: list[list[float]]  # per image, per true polyp: refined-mask IoU (0 if missed)
    min_score: float
    uncertainties: list[float]

    @property
    def mean_polyp_iou(self) -> float:
        """Over every true polyp (a missed one 0); NaN where there is none."""
        ious = [iou for image in self.polyp_ious for iou in image]
        return float(np.mean(ious)) if ious else float("nan")

    def ranking_check(self) -> tuple[float, float]:
        """Does `rank` put first what the model gets wrong? The mean refined IoU (per image, over
        its polyps; a missed polyp 0) of the quarter of images the detector is least sure
        about, and of the quarter it is surest about; images without a polyp are not scored
        (NaN where none has one)."""
        with_polyps = [i for i, ious in enumerate(self.polyp_ious) if ious]
        if not with_polyps:
            return float("nan"), float("nan")
        uncertainty = np.array([self.uncertainties[i] for i in with_polyps])
        per_image = np.array([np.mean(self.polyp_ious[i]) for i in with_polyps])
        order = np.argsort(uncertainty)[::-1]
        quarter = max(1, len(order) // 4)
        return float(per_image[order[:quarter]].mean()), float(per_image[order[-quarter:]].mean())

    def as_dict(self) -> dict[str, Any]:
        precision, recall = precision_recall(self.images, self.min_score)
        most_uncertain, least_uncertain = self.ranking_check()
        return {
            "n": len(self.images),
            "polyps": sum(len(i.truths) for i in self.images),
            "min_score": self.min_score,
            "precision@0.5": precision,
            "recall@0.5": recall,
            "ap50": average_precision(self.images, 0.5),
            "ap50_95": coco_average_precision(self.images),
            "recall@0.5_at_precision_0.85": recall_at_precision(self.images, 0.85),
            "mean_refined_iou": self.mean_polyp_iou,
            "refined_iou_most_uncertain_quarter": most_uncertain,
            "refined_iou_least_uncertain_quarter": least_uncertain,
            "per_image": [
                {
                    "name": image.name,
                    "truths": [_box(b) for b in image.truths],
                    "detections": [{"box": _box(b), "score": s} for b, s in image.detections],
                    "refined_iou": ious,
                    "uncertainty": u,
                }
                for image, ious, u in zip(self.images, self.polyp_ious, self.uncertainties, strict=True)
            ],
        }


def _box(box: Any) -> list[float]:
    return [round(box.x1, 1), round(box.y1, 1), round(box.x2, 1), round(box.y2, 1)]


def evaluate_detection(
    detector: PolypDetector,
    predictor: ImagePredictor,
    samples: Sequence[PolypSample],
    min_score: float | None = None,
    progress: bool = True,
    shift: str | None = None,
) -> DetectionScores:
    """Detections down to a low floor (for AP), outlined, those outlining a polyp found better
    dropped, as pre-annotation does (`find_polyps`); precision and recall at `min_score`
    (default: the detector's own threshold); each true polyp's IoU with the outline of the
    detection that matched it at box IoU 0.5 (0 if none did). Under a `shift` (polypseg.shifts), each
    image and mask are degraded alike and the polyps are the shifted mask's components."""
    from polypseg.shifts import apply_shift

    floor = detector.threshold if min_score is None else min_score
    images, polyp_ious, uncertainties = [], [], []
    for sample in tqdm(samples, desc=shift or "detecting", unit="image", disable=not progress):
        image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
        boxes = sample.boxes
        if shift is not None:
            image, truth = apply_shift(shift, image, truth > 0, sample.name)
            boxes = None
        found = find_polyps(detector, predictor, image, min(floor, 0.05))
        targets = polyp_targets(truth, boxes)
        scored = ImageDetections(
            sample.name,
            tuple((p.detection.box, p.detection.score) for p in found.polyps),
            tuple(b for b, _ in targets),
        )
        images.append(scored)
        uncertainties.append(found.uncertainty)
        polyp_ious.append(_outline_ious(scored, found.polyps, floor, [target for _, target in targets]))
    return DetectionScores(images, polyp_ious, floor, uncertainties)


def _outline_ious(
    scored: ImageDetections, polyps: list[FoundPolyp], floor: float, targets: list[np.ndarray]
) -> list[float]:
    """Each true polyp's IoU with the outline of the detection that found it, matched as
    recall counts it (box IoU 0.5, detections at the floor, best first); 0 where none did."""
    from polypseg.metrics import score_masks

    ious = [0.0] * len(targets)
    for d, truth in scored.assignments(0.5, floor):
        if truth is not None:
            ious[truth] = score_masks(polyps[d].mask, targets[truth]).iou
    return ious


def rank_images(
    detector: PolypDetector, images: Iterable[tuple[str, Callable[[], np.ndarray]]]
) -> tuple[list[tuple[str, float]], list[str]]:
    """Named images by the detector's uncertainty, most uncertain first; and the names of
    those that could not be read. Each is read when its turn comes."""
    ranked, skipped = [], []
    for name, read in tqdm(images, desc="ranking", unit="image"):
        try:
            image = read()
        except PolypsegError as exc:
            log.warning("skipped %s: %s", name, exc)
            skipped.append(name)
            continue
        ranked.append((name, detector.uncertainty(image)))
    return sorted(ranked, key=lambda item: -item[1]), skipped


def named_files(files: Sequence[Path]) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """Image files as named images for `rank_images`."""
    return [(path.name, functools.partial(read_image, path)) for path in files]
