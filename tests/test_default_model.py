"""The model the project ships: it loads by default and is clearly better than the trivial baseline."""

from conftest import VAL_LIST
from polypseg.datasets import load_folder_dataset
from polypseg.evaluation import ellipse_baseline, evaluate
from polypseg.predictors import build_predictor, default_checkpoint


def test_default_loads_with_its_metadata():
    path = default_checkpoint()
    assert path.stat().st_size < 50 * 2**20
    predictor = build_predictor()
    assert predictor.name == "clickunet"  # the click-guided U-Net (docs/models.md)
    metadata = predictor.metadata
    assert metadata["version"] and metadata["training"]["val_list"].endswith("kvasir-seg-val.txt")
    assert metadata["metrics"]["iou@0.1"] > 0.85
    assert metadata["metrics"]["iou@0.1+3clicks"] > metadata["metrics"]["iou@0.1"] + 0.03  # clicks help


def test_default_beats_the_ellipse_on_validation_images(kvasir):
    names = VAL_LIST.read_text().split()[:16]  # held out from training
    samples = load_folder_dataset(kvasir / "images", kvasir / "masks", kvasir / "bboxes.json", names)
    predictor = build_predictor(device="cpu")
    results = evaluate(
        {"model": lambda image, prompt: predictor.predict(image, prompt).mask, "ellipse": ellipse_baseline},
        samples,
        box_noise=0.1,
        progress=False,
    )
    model, ellipse = results["model"].mean, results["ellipse"].mean
    assert model.iou > 0.8 and model.iou > ellipse.iou + 0.05, (model, ellipse)
    assert model.dice > ellipse.dice
