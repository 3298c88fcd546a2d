"""Predictors on real frames with random-weight checkpoints in the real file formats."""

import numpy as np
import pytest
import torch

from conftest import ROOT
from polypseg.errors import CheckpointError, ModelError, PromptError
from polypseg.predictors import build_predictor
from polypseg.predictors.sam2 import config_from_weights
from polypseg.prompts import Box, Point, Prompt

BOX = Box(38, 5, 430, 338)


@pytest.mark.parametrize("fixture", ["unet_checkpoint", "unetplusplus_checkpoint"])
def test_box_channel_models_answer_an_image_sized_mask(request, polyp_image, fixture):
    predictor = build_predictor(checkpoint=request.getfixturevalue(fixture), device="cpu")
    image, _ = polyp_image
    prediction = predictor.predict(image, Prompt(box=BOX))
    assert prediction.mask.shape == image.shape[:2] and prediction.mask.dtype == bool
    assert 0.0 <= prediction.score <= 1.0
    # The crop geometry never paints outside the window around the box.
    window = predictor.geometry.window(BOX, image.shape[1], image.shape[0])
    outside = prediction.mask.copy()
    outside[int(window.y1) : int(window.y2), int(window.x1) : int(window.x2)] = False
    assert not outside.any()


def test_box_channel_models_refuse_clicks_alone(polyp_image, unet_checkpoint):
    predictor = build_predictor(checkpoint=unet_checkpoint)
    with pytest.raises(PromptError, match="needs a box around the polyp"):
        predictor.predict(polyp_image[0], Prompt(points=(Point(200, 200),)))


def test_grayscale_and_rgba_input_arrays(polyp_image, unet_checkpoint):
    predictor = build_predictor(checkpoint=unet_checkpoint)
    gray = polyp_image[0][:, :, 0]
    rgba = np.dstack([polyp_image[0], np.full(gray.shape, 255, np.uint8)])
    for image in (gray, rgba):
        assert predictor.predict(image, Prompt(box=BOX)).mask.shape == gray.shape


@pytest.fixture(scope="module")
def sam2(sam2_checkpoint):
    return build_predictor(checkpoint=sam2_checkpoint, device="cpu")


def test_official_sam2_file_is_recognised(sam2, sam2_checkpoint):
    state = torch.load(sam2_checkpoint, weights_only=True)["model"]
    assert config_from_weights(state) == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert sam2.name == "sam2" and sam2.model.image_size == 1024
    with pytest.raises(ModelError, match="test-time augmentation is for the U-Nets"):
        build_predictor(checkpoint=sam2_checkpoint, device="cpu", tta=True)


def test_sam2_prompts_and_the_cache(sam2, polyp_image):
    image, _ = polyp_image
    runs = sam2.encoder_runs
    prepared = sam2.prepare(image)
    prompts = [
        Prompt(box=BOX),
        Prompt(points=(Point(200, 150),)),
        Prompt(points=(Point(200, 150), Point(20, 500, positive=False))),
        Prompt(box=BOX, points=(Point(200, 150),)),
    ]
    for prompt in prompts:
        prediction = sam2.segment(prepared, prompt)
        assert prediction.mask.shape == image.shape[:2] and 0 <= prediction.score <= 1
    refined = sam2.segment(prepared, Prompt(box=BOX, previous_mask=prediction.mask))
    assert refined.mask.shape == image.shape[:2]
    # A second prompt on the same image, even through predict(), skips the encoder.
    sam2.predict(image.copy(), Prompt(box=Box(100, 50, 300, 300)))
    assert sam2.encoder_runs == runs + 1 and sam2.cache.hits >= 1


def test_sam2_prompts_are_pixel_indices_as_sam2_was_trained(sam2):
    # On a frame of the model's own size the transform is the identity, so what reaches the
    # prompt encoder (which adds half a pixel) is SAM2's own convention (sam2 1.1.0,
    # sam2/modeling/sam2_utils.py: clicks at pixel indices, boxes by mask_to_box from the
    # first pixel to the last). A mask covering columns 10..29 and rows 20..59 has the
    # polypseg box (10, 20, 30, 60); a click at the centre of pixel (15, 25) is (15.5, 25.5).
    size = int(sam2.model.image_size)
    prompt = Prompt(box=Box(10, 20, 30, 60), points=(Point(15.5, 25.5), Point(5.5, 7.5, positive=False)))
    coords, labels = sam2.prompt_points(prompt, size, size)
    assert labels.tolist() == [[2, 3, 1, 0]]
    assert torch.allclose(coords, torch.tensor([[[10.0, 20.0], [29.0, 59.0], [15.0, 25.0], [5.0, 7.0]]]))
    # On a frame twice the model's size, the same in the model's pixels: scaled, then converted.
    coords, _ = sam2.prompt_points(prompt, 2 * size, 2 * size)
    assert torch.allclose(coords, torch.tensor([[[5.0, 10.0], [14.0, 29.0], [7.25, 12.25], [2.25, 3.25]]]))
    # A box under a model pixel wide (on a frame 8x the model's size) keeps its corners in order.
    coords, _ = sam2.prompt_points(Prompt(box=Box(40, 40, 44, 44)), 8 * size, 8 * size)
    assert coords[0, 1].tolist() == coords[0, 0].tolist() == [5.0, 5.0]


def test_sam2_weights_of_another_size_are_refused(tmp_path, sam2_checkpoint):
    state = torch.load(sam2_checkpoint, weights_only=True)["model"]
    from polypseg.checkpoints import save_checkpoint

    save_checkpoint(
        tmp_path / "mislabelled.pt",
        state,
        {"architecture": "sam2", "config": "configs/sam2.1/sam2.1_hiera_s.yaml"},
    )
    with pytest.raises(CheckpointError, match="weights do not fit configs/sam2.1/sam2.1_hiera_s.yaml"):
        build_predictor(checkpoint=tmp_path / "mislabelled.pt")


def test_project_sam2_checkpoint_carries_its_metadata(tmp_path, sam2_checkpoint):
    from polypseg.checkpoints import save_checkpoint

    state = torch.load(sam2_checkpoint, weights_only=True)["model"]
    metadata = {
        "architecture": "sam2",
        "config": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "version": "sam2-polyp-1",
    }
    save_checkpoint(tmp_path / "finetuned.pt", {k: v.half() for k, v in state.items()}, metadata)
    predictor = build_predictor("sam2", tmp_path / "finetuned.pt")
    assert predictor.version == "sam2-polyp-1" and predictor.metadata["config"].endswith("hiera_t.yaml")


def test_box_channel_models_keep_no_cache(polyp_image, unet_checkpoint):
    predictor = build_predictor(checkpoint=unet_checkpoint)
    predictor.predict(polyp_image[0], Prompt(box=BOX))
    assert len(predictor.cache) == 0 and predictor.encoder_runs == 0


def test_sam2_takes_a_mask_alone(sam2, polyp_image):
    image, truth = polyp_image
    prediction = sam2.predict(image, Prompt(previous_mask=truth))
    assert prediction.mask.shape == truth.shape


def test_test_time_augmentation_averages_flipped_views(polyp_image) -> None:
    from polypseg.metrics import score_masks

    image, truth = polyp_image
    prompt = Prompt(box=Box(38, 5, 430, 338))
    box_unet = ROOT / "polypseg" / "models" / "box-unet.pt"  # test-time augmentation is the box U-Net's
    plain = build_predictor(checkpoint=box_unet, device="cpu").predict(image, prompt).mask
    tta = build_predictor(checkpoint=box_unet, device="cpu", tta=True)
    averaged = tta.probability(image, prompt.fitted_to(image.shape[1], image.shape[0]))
    assert averaged.shape == truth.shape and averaged.min() >= 0 and averaged.max() <= 1
    mask = tta.predict(image, prompt).mask
    assert score_masks(mask, truth).iou > 0.8 and score_masks(mask, plain).iou > 0.9


def test_a_retrained_u_net_keeps_the_input_size_it_was_served_at() -> None:
    from polypseg.box_input import BoxInputGeometry
    from polypseg.families.box_unet import input_fields

    served = BoxInputGeometry()  # a checkpoint that names no input geometry is served so
    assert input_fields({}) == {"geometry": served.mode, "size": served.size, "margin": served.margin}
    assert input_fields({"input": {"size": 224}})["size"] == 224


def test_test_time_augmentation_of_the_shipped_click_model(polyp_image, monkeypatch) -> None:
    """POLYPSEG_TTA=1 turns it on for the default model too: every view of every replayed click
    is a consistent input, and the answers stay the model's own."""
    from polypseg.metrics import score_masks

    image, truth = polyp_image
    prompt = Prompt(box=Box(38, 5, 430, 338), points=(Point(240, 170, True), Point(60, 320, False)))
    plain = build_predictor(device="cpu")
    monkeypatch.setenv("POLYPSEG_TTA", "1")
    tta = build_predictor(device="cpu")
    assert (plain.tta, tta.tta) == (False, True)
    views: list[int] = []
    tta.model.register_forward_hook(lambda module, args, output: views.append(args[0].shape[0]))
    answer, expected = tta.predict(image, prompt), plain.predict(image, prompt)
    assert views == [3, 3, 3]  # the box, then each click: three views each
    assert score_masks(answer.mask, truth).iou > 0.8 and score_masks(answer.mask, expected.mask).iou > 0.9
    assert answer.presence is not None and abs(answer.presence - expected.presence) < 0.2
