"""Loaded networks answer as the trained ones do, with their batch norms folded away."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ONE_POLYP, ROOT
from polypseg.checkpoints import load_checkpoint, load_weights
from polypseg.detection_job import build_detector
from polypseg.images import read_image
from polypseg.inference import fold_batch_norms
from polypseg.predictors import build_predictor
from polypseg.predictors.box_channel import create_box_channel_model
from polypseg.predictors.click_unet import create_click_model
from polypseg.prompts import Box, Point, Prompt

MODELS = ROOT / "polypseg" / "models"
BOX = Box(38, 5, 430, 338)
CLICKS = (Point(200.5, 150.5), Point(30.5, 300.5, positive=False))


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def as_trained(name: str, create) -> tuple[nn.Module, dict]:  # type: ignore[no-untyped-def]
    """A shipped file's network as training builds it, batch norms and all."""
    state, metadata, _ = load_checkpoint(MODELS / name)
    model = create(metadata)
    load_weights(model, state, str(MODELS / name), name)
    assert batch_norms(model) > 0
    return model.eval(), metadata


@pytest.mark.parametrize(
    ("name", "create", "prompt"),
    [
        (
            "default.pt",
            lambda m: create_click_model(m.get("encoder", "resnet18"), m.get("decoder", "unet")),
            Prompt(box=BOX, points=CLICKS),
        ),
        (
            "box-unet.pt",
            lambda m: create_box_channel_model(m["architecture"], m["encoder"]),
            Prompt(box=BOX),
        ),
    ],
)
def test_shipped_models_answer_as_trained_with_batch_norms_folded(kvasir, name, create, prompt):
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    served = build_predictor(checkpoint=MODELS / name)
    assert batch_norms(served.model) == 0
    assert served.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    model, metadata = as_trained(name, create)
    plain = type(served)(model, metadata)
    a, b = served.predict(image, prompt), plain.predict(image, prompt)
    # Folding reorders float sums: a pixel at exactly 0.5 may fall either way.
    assert np.count_nonzero(a.mask != b.mask) <= 3 and a.mask.sum() > 1000
    assert a.score == pytest.approx(b.score, abs=1e-4)


def test_the_shipped_detector_finds_the_same_boxes_with_batch_norms_folded(kvasir):
    detector = build_detector()
    assert batch_norms(detector.model) == 0
    model, metadata = as_trained("detector.pt", lambda m: type(detector).create_model(m))
    plain = type(detector)(model, metadata)
    for image in sorted((kvasir / "images").glob("*.jpg"))[:3]:
        frame = read_image(image)
        (found, unsure), (expected, expected_unsure) = detector.find(frame), plain.find(frame)
        assert len(found) == len(expected) >= 1
        for a, b in zip(found, expected, strict=True):
            assert a.box.iou(b.box) > 0.999 and a.score == pytest.approx(b.score, abs=1e-4)
        assert unsure == pytest.approx(expected_unsure, abs=1e-3)


class NormFirst(nn.Module):
    """A conv and a batch norm whose forward applies the norm first: not a known order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.bn1(x))


def test_only_batch_norms_known_to_follow_their_convolution_are_folded():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), NormFirst().eval()).eval()
    chain[1].running_mean.uniform_(-1, 1)
    chain[1].running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        before = chain(x)
    assert fold_batch_norms(chain) == 1
    assert isinstance(chain[1], nn.Identity) and isinstance(chain[3].bn1, nn.BatchNorm2d)
    with torch.inference_mode():
        assert torch.allclose(chain(x), before, atol=1e-5)
    training = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))  # in training mode: left
    assert fold_batch_norms(training) == 0
