"""Training of the click-guided U-Net: `polypseg train click-unet`.

RITM's iterative training (Sofiiuk et al. 2022) on the box U-Net's data: each batch starts
from the box (and, for some samples, a few random clicks on the polyp or beside it); then, for
a random number of rounds, the model answers without gradients and the next click is placed on
its largest error, exactly as the evaluation protocol places it (`polypseg.clicks.next_click`),
its answer becoming the previous-mask channel; the last input is trained on. So the model
learns to fix its own mistakes, not random ones.

The mask is trained only on boxes around a polyp (BCE + Dice, the BCE weighing the error
region each click pointed at `--click-weight` times more); boxes without one (the
`--negative-fraction` draws) train only the presence output (BCE). A box is thus always
answered with the model's best mask, and presence says whether a polyp is there.

`--init` takes a box-channel U-Net (its first convolution is widened with zero weights for the
new channels, so training starts from that model's answers) or a click model to go on from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from polypseg.box_input import BoxInputGeometry
from polypseg.clicks import CLICK_RADIUS, click_channels, next_click
from polypseg.errors import ModelError
from polypseg.predictors.click_unet import (
    PRESENCE_HEAD,
    ClickUnetPredictor,
    add_click_channels,
    create_click_model,
    widen_box_channel_state,
)
from polypseg.prompts import Box, Point
from polypseg.training.common import dataset_split, start_from, validation_metrics
from polypseg.training.config import ClickUnetTrainConfig
from polypseg.training.losses import bce_dice_loss
from polypseg.training.unet import PolypRegions, UnetRun

# Network pixels either side of the true outline that --edge-weight weighs more.
EDGE_BAND = 2


def random_clicks(truth: np.ndarray, rng: np.random.Generator) -> list[Point]:
    """One or two positive clicks on the polyp and maybe a negative one off it, anywhere
    (RITM's initial clicks): annotators do not always click where the protocol would."""
    points = []
    ys, xs = np.nonzero(truth)
    for _ in range(rng.integers(1, 3)):
        i = rng.integers(len(xs))
        points.append(Point(xs[i] + 0.5, ys[i] + 0.5, True))
    if rng.random() < 0.5:
        ys, xs = np.nonzero(~truth)
        if len(xs):
            i = rng.integers(len(xs))
            points.append(Point(xs[i] + 0.5, ys[i] + 0.5, False))
    return points


def error_region_at(predicted: np.ndarray, truth: np.ndarray, click: Point) -> np.ndarray:
    """The connected error region (missed or false) a click was placed in, as 0/1 floats."""
    error = (truth & ~predicted) if click.positive else (predicted & ~truth)
    labels, _ = ndimage.label(error)
    label = labels[min(int(click.y), error.shape[0] - 1), min(int(click.x), error.shape[1] - 1)]
    return (labels == label).astype(np.float32) if label else np.zeros(error.shape, np.float32)


def outline_band(truth: np.ndarray, band: int = EDGE_BAND) -> np.ndarray:
    """The pixels within `band` pixels of a mask's outline, inside and out, as 0/1 float32."""
    inside = truth.astype(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    return (cv2.dilate(inside, disk) - cv2.erode(inside, disk)).astype(np.float32)


class ClickUnetRun(UnetRun):
    """A click-guided U-Net run: the U-Net run's data, iterative click rounds in each batch."""

    loss_name = "BCE + Dice (mask) + presence BCE"

    def build(self) -> None:
        c = self.config
        if c.select != "clean":
            raise ModelError(
                f"--select {c.select} is for the box U-Net; a click model's best epoch is the best "
                "mean of its box-only IoU, IoU after clicks and tracking IoU"
            )
        self.geometry = BoxInputGeometry(c.geometry, c.size, c.margin)
        self.train_samples, self.val_samples = dataset_split(c)
        self.model = create_click_model(c.encoder, c.decoder, c.encoder_weights)

        def adapt(state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
            box_model = metadata.get("architecture") in ("unet", "unetplusplus")
            return widen_box_channel_state(state, self.model) if box_model else state

        self.start = start_from(
            self.model, c.init, adapt, f"a click-guided {c.decoder} with a {c.encoder} encoder"
        )
        self.model.to(self.device)
        self.data = PolypRegions(
            self.train_samples, self.geometry, c.negative_fraction, c.shift_augment, c.camera_augment
        )
        if c.train == "presence":
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad = name.startswith(PRESENCE_HEAD)
        trained = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(trained, lr=c.lr, weight_decay=c.weight_decay)

    def train_mode(self) -> None:
        """The model in training mode; with `--train presence`, all but the presence head
        answer as in evaluation (their batch-norm statistics stay as they were)."""
        self.model.train()
        if self.config.train == "presence":
            for name, module in self.model.named_children():
                if name + "." != PRESENCE_HEAD:
                    module.eval()

    def batch_loss(self, batch: Any) -> torch.Tensor:
        c = self.config
        # Clicks and rounds drawn from the batch's place in the run, so a resumed run draws the same.
        rng = np.random.default_rng([c.seed, self.rank, self.epoch, self.batch_in_epoch])
        base, target = batch
        truths = target[:, 0].numpy() > 0.5
        present = truths.reshape(len(truths), -1).any(axis=1)
        size = base.shape[-1]
        clicks: list[list[Point]] = [
            random_clicks(truth, rng) if has and rng.random() < c.random_click_fraction else []
            for truth, has in zip(truths, present, strict=True)
        ]
        previous = np.zeros((len(truths), 1, size, size), dtype=np.float32)
        # Pixels a click pointed at weigh more: the error region each click was placed in (or
        # a disk around a random click), so that following a click is not drowned by the many
        # pixels the answer already had right.
        weights = np.ones((len(truths), 1, size, size), dtype=np.float32)
        if c.edge_weight:  # where most of what is still wrong after clicks lies (docs/models.md)
            for i in np.flatnonzero(present):
                weights[i, 0] += c.edge_weight * outline_band(truths[i])
        for i, points in enumerate(clicks):
            weights[i, 0] += c.click_weight * click_channels(
                points, (0.0, 0.0), (1.0, 1.0), size, 3 * CLICK_RADIUS
            ).max(0)
        no_clicks = rng.random() < c.no_click_fraction
        rounds = 0 if no_clicks else int(rng.integers(1, c.click_rounds + 1))
        if rounds:
            self.model.eval()  # as RITM: the model answers as it would for an annotator
            with torch.no_grad():
                for _ in range(rounds):
                    logits, _ = self.model(self._inputs(base, clicks, previous).to(self.device))
                    previous = torch.sigmoid(logits.float()).cpu().numpy()
                    for i in np.flatnonzero(present):
                        predicted = previous[i, 0] > 0.5
                        click = next_click(predicted, truths[i])
                        if click is not None:
                            clicks[i].append(click)
                            weights[i, 0] += c.click_weight * error_region_at(predicted, truths[i], click)
            self.train_mode()
        logits, presence = self.model(self._inputs(base, clicks, previous).to(self.device))
        presence_loss = F.binary_cross_entropy_with_logits(
            presence[:, 0].float(), torch.from_numpy(present.astype(np.float32)).to(self.device)
        )
        if not present.any() or c.train == "presence":
            return c.presence_weight * presence_loss
        keep = torch.from_numpy(present).to(self.device)
        weight = torch.from_numpy(weights).to(self.device)[keep]
        mask_loss = bce_dice_loss(logits[keep].float(), target.to(self.device)[keep], weight)
        return mask_loss + c.presence_weight * presence_loss

    @staticmethod
    def _inputs(base: torch.Tensor, clicks: list[list[Point]], previous: np.ndarray) -> torch.Tensor:
        """The batch as the predictor builds its input; training clicks are in network pixels."""
        size = base.shape[-1]
        network = Box(0, 0, size, size)
        return torch.from_numpy(
            np.stack(
                [
                    add_click_channels(x, network, points, p[0])
                    for x, points, p in zip(base.numpy(), clicks, previous, strict=True)
                ]
            )
        )

    def metadata(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        c = self.config
        metadata = super().metadata(metrics)  # the U-Net run's record; architecture clickunet
        metadata["decoder"] = c.decoder
        metadata["training"]["init"] = str(c.init) if c.init else None
        return metadata

    def kind(self) -> str:
        return self.kind_of({"architecture": "clickunet", "decoder": self.config.decoder})

    @staticmethod
    def kind_of(metadata: dict[str, Any]) -> str:
        decoder = metadata.get("decoder", "unet")
        if metadata.get("architecture") != "clickunet" or decoder == "unet":
            return str(metadata.get("architecture"))
        return f"clickunet-{decoder}"

    def predictor(self) -> ClickUnetPredictor:
        return ClickUnetPredictor(self.model, self.metadata(), device=str(self.device))

    def validate(self) -> dict[str, float]:
        if not self.val_samples:
            return {}
        from polypseg.evaluation_clicks import evaluate_clicks

        predictor = self.predictor()
        metrics = validation_metrics(predictor, self.val_samples)
        curve = evaluate_clicks(
            {"model": predictor.segmenter()},
            self.val_samples,
            clicks=self.config.val_clicks,
            box_noise=0.1,
            progress=False,
        )["model"]
        for k, iou in enumerate(curve.mean_iou_at_click):
            metrics[f"iou@0.1+{k}clicks"] = iou
        metrics["noc90@0.1"] = curve.noc(0.90)
        if self.config.val_sequences > 0:
            metrics["track_iou"] = self._track_iou(predictor)
        return metrics

    def _track_iou(self, predictor: ClickUnetPredictor) -> float:
        """Mean IoU over the frames of synthetic sequences made from the validation images (the
        sequences `make-sequences --count N` makes, without its JPEG step), tracked by the
        classical tracker from the first frame's box. Stills cannot show how the model answers
        moving, blurred frames, where its presence output decides whether a track goes on."""
        from polypseg.masks import mask_box
        from polypseg.video.classical import ClassicalTracker
        from polypseg.video.evaluation import score_track, summarise
        from polypseg.video.synthetic import sample_sequence

        c = self.config
        tracker, results = ClassicalTracker(predictor), []
        for sample in self.val_samples[: c.val_sequences]:
            frames, truths = zip(*sample_sequence(sample, c.val_sequence_length), strict=True)
            box = mask_box(truths[0])
            if box is not None:
                results.append(score_track(tracker, sample.name, enumerate(frames), truths.__getitem__, box))
        return float(summarise(results)["mean_iou"]) if results else 0.0

    def selection_score(self, metrics: dict[str, float], train_loss: float) -> float:
        """The box alone, the box with clicks and (where validated) tracking weigh the same."""
        if not metrics:
            return -train_loss
        scores = [metrics["iou@0.1"], metrics[f"iou@0.1+{self.config.val_clicks}clicks"]]
        if "track_iou" in metrics:
            scores.append(metrics["track_iou"])
        return sum(scores) / len(scores)


def train_click_unet(config: ClickUnetTrainConfig) -> Path:
    return ClickUnetRun(config).fit()
