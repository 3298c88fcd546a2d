"""Polyp detection without a prompt: boxes with scores on a whole frame.

Two designs answer the same calls (`find`, `detect`, `uncertainty`), each its own checkpoint
family:
- `MapDetector`: a whole-frame segmentation network (segmentation-models-pytorch, RGB in, the
  polyp probability out, at a fixed square working size); each connected region of its
  probability map above `threshold` is one detection, its box the region's bounding box in the
  frame's pixels and its score the region's peak probability. Its uncertainty is the mean
  binary entropy of the map over the pixels it is not confident about.
- `FcosDetector`: a box detector (torchvision's FCOS, anchor-free, on a ResNet FPN) at the
  same working size: boxes and scores straight from the network. Its uncertainty is the
  largest binary entropy of its detections' scores.
Uncertainty ranks frames for labelling.

Masks for detections come from the box-prompted model (`polypseg.detection_job.outline`): the
detector finds, the interactive model outlines, as the reference work's pipeline does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from scipy import ndimage

from polypseg.box_input import MEAN, STD
from polypseg.checkpoints import load_weights
from polypseg.errors import ModelError
from polypseg.images import as_rgb
from polypseg.inference import for_inference
from polypseg.prompts import Box

DECODERS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus"}
# The square working size of a checkpoint that does not say its own.
DEFAULT_SIZE = 320
# Regions smaller than this share of the frame are specks, not polyps.
MIN_AREA_FRACTION = 0.0008
# The probability at which a region's outline (and so its box) is drawn.
REGION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float

    def as_dict(self) -> dict[str, Any]:
        b = self.box
        return {"box": [round(b.x1, 1), round(b.y1, 1), round(b.x2, 1), round(b.y2, 1)], "score": self.score}


def create_detector_model(encoder: str = "resnet18", decoder: str = "unet") -> torch.nn.Module:
    """An untrained whole-frame polyp segmenter: RGB in, polyp logits out."""
    if decoder not in DECODERS:
        raise ModelError(f"unknown detector decoder {decoder!r}; known: {', '.join(DECODERS)}")
    return smp.create_model(
        DECODERS[decoder], encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1
    )


def detector_input(image: np.ndarray, size: int) -> np.ndarray:
    """The 3 x size x size float32 network input of a whole RGB frame."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return ((resized.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)


def detections_from_probability(
    probability: np.ndarray, width: int, height: int, min_score: float = REGION_THRESHOLD
) -> list[Detection]:
    """Regions of the working-size probability map as boxes in the frame's pixels, scored by
    their peak probability, best first. A region is outlined at REGION_THRESHOLD; below it,
    down to `min_score`, faint regions that hold no such outline are detections too (their
    outline at `min_score`), so that lowering the score floor only adds detections."""
    size_y, size_x = probability.shape
    scale = (width / size_x, height / size_y)
    min_area = MIN_AREA_FRACTION * size_x * size_y
    detections = _regions(probability, REGION_THRESHOLD, scale, min_area)
    if min_score < REGION_THRESHOLD:
        faint = _regions(probability, min_score, scale, min_area)
        detections += [d for d in faint if d.score < REGION_THRESHOLD]
    return sorted((d for d in detections if d.score >= min_score), key=lambda d: -d.score)


def _regions(
    probability: np.ndarray, threshold: float, scale: tuple[float, float], min_area: float
) -> list[Detection]:
    labels, _ = ndimage.label(probability > threshold)
    found = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[window] == index
        if region.sum() < min_area:
            continue
        ys, xs = window
        box = Box(xs.start * scale[0], ys.start * scale[1], xs.stop * scale[0], ys.stop * scale[1])
        found.append(Detection(box, float(probability[window][region].max())))
    return found


def frame_uncertainty(probability: np.ndarray) -> float:
    """Mean binary entropy (bits) of the probability map over its undecided pixels (those
    between 0.05 and 0.95), times their share of the frame: 0 for a frame the network is sure
    about everywhere, higher the more of it is in doubt and the deeper the doubt."""
    p = np.clip(probability.astype(np.float64), 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(entropy[(p > 0.05) & (p < 0.95)].sum() / p.size)


class PolypDetector(ABC):
    """A trained detector: `find(image)` gives boxes with scores (best first) and how unsure
    the detector is about the frame (0..1: 0 sure everywhere), as `uncertainty_measure` says."""

    uncertainty_measure: ClassVar[str]

    def __init__(
        self,
        model: torch.nn.Module,
        metadata: dict[str, Any],
        device: str = "cpu",
        threshold: float = 0.5,
        tta: bool = False,
    ) -> None:
        """`tta`: also look at the frame mirrored left-right and join what both views see
        (test-time augmentation; twice the network's work)."""
        self.tta = tta
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.version = str(metadata.get("version", "unversioned"))
        self.size = int(metadata.get("input", {}).get("size", DEFAULT_SIZE))
        self.device = torch.device(device)
        # The shipped score floor, chosen on validation data (precision and recall), in the file;
        # views fused by test-time augmentation score on their own scale, with their own floor
        # where the file has one (`tta_threshold`).
        self.threshold = float(metadata.get("threshold", threshold))
        if tta:
            self.threshold = float(metadata.get("tta_threshold", self.threshold))

    @classmethod
    def from_state(
        cls, state: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kwargs: Any
    ) -> PolypDetector:
        model = cls.create_model(metadata)
        load_weights(
            model, state, path, f"a {metadata.get('architecture')} with encoder {metadata.get('encoder')}"
        )
        return cls(for_inference(model), metadata, **kwargs)

    @staticmethod
    @abstractmethod
    def create_model(metadata: dict[str, Any]) -> torch.nn.Module:
        """The untrained network a checkpoint with this metadata holds."""

    @abstractmethod
    def find(self, image: np.ndarray, min_score: float | None = None) -> tuple[list[Detection], float]:
        """Polyps in a frame scoring at least `min_score` (default: the detector's shipped
        threshold), best first, and the frame's uncertainty, from one pass of the network."""

    def detect(self, image: np.ndarray, min_score: float | None = None) -> list[Detection]:
        return self.find(image, min_score)[0]

    def uncertainty(self, image: np.ndarray) -> float:
        return self.find(image)[1]

    def _input(self, image: np.ndarray) -> torch.Tensor:
        """The network's batch for a frame: the frame, and with `tta` its mirror image too."""
        x = torch.from_numpy(detector_input(as_rgb(image), self.size))[None].to(self.device)
        return torch.cat([x, x.flip(-1)]) if self.tta else x


class MapDetector(PolypDetector):
    """The whole-frame segmenter: regions of its probability map are the detections."""

    uncertainty_measure = "mean binary entropy of the probability map over its undecided pixels"

    @staticmethod
    def create_model(metadata: dict[str, Any]) -> torch.nn.Module:
        return create_detector_model(metadata.get("encoder", "resnet18"), metadata.get("decoder", "unet"))

    def probability(self, image: np.ndarray) -> np.ndarray:
        """The polyp probability at the working size (size x size)."""
        with torch.inference_mode():
            maps = torch.sigmoid(self.model(self._input(image))[:, 0].float())
        if self.tta:
            maps = torch.stack([maps[0], maps[1].flip(-1)])
        return maps.mean(0).cpu().numpy()

    def find(self, image: np.ndarray, min_score: float | None = None) -> tuple[list[Detection], float]:
        height, width = image.shape[:2]
        floor = self.threshold if min_score is None else min_score
        probability = self.probability(image)
        return detections_from_probability(probability, width, height, floor), frame_uncertainty(probability)


# The box detector's own floor: scores below it are never returned.
FCOS_SCORE_FLOOR = 0.05
# Of two boxes overlapping this much, only the better is kept (after FCOS's own suppression at
# torchvision's 0.6). Most of the resnet18 detector's false detections at its floor were a
# second box on a polyp it had found; dropping them raised its precision there from 0.807 to
# 0.829 at the same recall (0.868) on the validation images, and under motion blur, edge crops
# and hue too (docs/models.md).
OVERLAP_IOU = 0.5
# ResNets whose stages feed the box detector's feature pyramid: their channels at stages 2-4.
FCOS_ENCODERS = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
}


def create_fcos_model(
    encoder: str = "resnet18", size: int = DEFAULT_SIZE, channels: int = 128
) -> torch.nn.Module:
    """An untrained box detector: torchvision's FCOS on a ResNet FPN (stages 2-4 and two extra
    levels, `channels` wide), two classes (background, polyp), taking frames already at the
    working size and normalised (`detector_input`)."""
    import torchvision
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if encoder not in FCOS_ENCODERS:
        raise ModelError(f"the box detector's encoder is one of {', '.join(FCOS_ENCODERS)}, not {encoder!r}")
    backbone = BackboneWithFPN(
        getattr(torchvision.models, encoder)(weights=None),
        {"layer2": "0", "layer3": "1", "layer4": "2"},
        list(FCOS_ENCODERS[encoder]),
        channels,
        extra_blocks=LastLevelP6P7(channels, channels),
    )
    return FCOS(
        backbone,
        num_classes=2,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        score_thresh=FCOS_SCORE_FLOOR,
        detections_per_img=20,
    )


def score_uncertainty(scores: list[float]) -> float:
    """How unsure a box detector is about a frame: the largest binary entropy (bits, 0..1) of
    its detections' scores, the detection nearest a coin toss deciding; 0 for a frame whose
    detections are all decided (or that has none above the floor). Within 0..1 like the map
    detector's, so Label Studio's score 1 - uncertainty stays a score. FCOS's scores are
    compressed (the validation polyps score 0.6-0.7), so its frames spread over a narrow band
    near 1: the order is what ranks them."""
    if not scores:
        return 0.0
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    return float((-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).max())


class FcosDetector(PolypDetector):
    """The box detector: FCOS's boxes and scores, scaled to the frame."""

    uncertainty_measure = "largest binary entropy of the detections' scores"

    @staticmethod
    def create_model(metadata: dict[str, Any]) -> torch.nn.Module:
        return create_fcos_model(
            metadata.get("encoder", "resnet18"), int(metadata.get("input", {}).get("size", DEFAULT_SIZE))
        )

    def find(self, image: np.ndarray, min_score: float | None = None) -> tuple[list[Detection], float]:
        height, width = image.shape[:2]
        floor = self.threshold if min_score is None else min_score
        with torch.inference_mode():
            outputs = self.model(list(self._input(image)))
        views = [self._detections(out, width, height, mirrored=k == 1) for k, out in enumerate(outputs)]
        found = drop_overlaps(fuse_views(views) if self.tta else views[0])
        uncertainty = score_uncertainty([d.score for d in found])
        return [d for d in found if d.score >= floor], uncertainty  # best first, as drop_overlaps leaves them

    def _detections(
        self, out: dict[str, torch.Tensor], width: int, height: int, mirrored: bool
    ) -> list[Detection]:
        """One view's boxes in the frame's pixels (a mirrored view's turned back)."""
        sx, sy = width / self.size, height / self.size
        found = []
        for (x1, y1, x2, y2), score in zip(out["boxes"].tolist(), out["scores"].tolist(), strict=True):
            if mirrored:
                x1, x2 = self.size - x2, self.size - x1
            box = Box(x1 * sx, y1 * sy, x2 * sx, y2 * sy)
            # FCOS's box sides are distances through a ReLU, so a box can come out with no width
            # or height (seen from a briefly trained model): that is no polyp, and no valid prompt.
            if box.width >= 1 and box.height >= 1:
                found.append(Detection(box, float(score)))
        return found


def drop_overlaps(detections: list[Detection], iou: float = OVERLAP_IOU) -> list[Detection]:
    """The detections, best first, without those overlapping a better one at `iou` or more."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if all(d.box.iou(k.box) < iou for k in kept):
            kept.append(d)
    return kept


# Boxes of two views overlapping this much are the same polyp.
FUSION_IOU = 0.55


def fuse_views(views: list[list[Detection]], iou: float = FUSION_IOU) -> list[Detection]:
    """The detections of several views of one frame as one list, by weighted box fusion
    (Solovyev et al., 2021): taken best score first, a detection joins the first cluster whose
    box it overlaps at `iou` or more and that holds nothing of its view yet, else starts one. A
    cluster's box is its members' score-weighted mean, its score their sum over the number of
    views, so that a polyp seen in one view only scores half."""
    ranked = sorted(((d, view) for view, found in enumerate(views) for d in found), key=lambda t: -t[0].score)
    clusters: list[tuple[list[Detection], set[int]]] = []
    fused: list[Box] = []
    for detection, view in ranked:
        for k, (members, seen) in enumerate(clusters):
            if view not in seen and fused[k].iou(detection.box) >= iou:
                members.append(detection)
                seen.add(view)
                weights = np.array([m.score for m in members])
                corners = np.array([m.box.as_array() for m in members])
                fused[k] = Box(*(weights @ corners / weights.sum()).tolist())
                break
        else:
            clusters.append(([detection], {view}))
            fused.append(detection.box)
    return sorted(
        (
            Detection(box, sum(m.score for m in members) / len(views))
            for box, (members, _) in zip(fused, clusters, strict=True)
        ),
        key=lambda d: -d.score,
    )
