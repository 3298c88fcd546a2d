"""The CVAT detector function (serverless/polyp-detector) replayed as CVAT's automatic annotation
calls it, through nuclio_sdk's own test platform, on real Kvasir-SEG validation frames; and the
same detector as a cvat_sdk auto_annotation function (backends/cvat/agent_detector.py).

The contract comes from CVAT's source, develop branch, in the public code index (a whole
snapshot of cvat-ai/cvat is over the fetch size limit):
- `cvat/apps/lambda_manager/views.py` (commit e4c12a27): `LambdaJob._call_detector` calls
  `LambdaFunction.invoke` once per frame with `{"frame", "mapping", "threshold"}`; for a
  detector the payload is `{"image": base64 of the frame}` plus `"threshold"` only when it is
  truthy (a threshold of 0 is not sent). The answer is a list; an item whose `label` is not
  mapped to a task label (by name, label types compatible: mask and polygon are) is dropped.
  For `"type": "mask"` the server takes `item["mask"]`: all but the last four numbers are the
  crop's 0/1 values, turned into run lengths by datumaro's `mask_to_rle` (background first),
  followed by the crop's inclusive box `xtl, ytl, xbr, ybr`; with "convert masks to polygons"
  it takes `item["points"]` as a polygon instead. `confidence` is not read. A newer version of
  the same file (with `DetectionResultConverter`) converts `mask` the same way.
- `cvat/apps/lambda_manager/serializers.py`: `threshold` is a float, not range-checked by CVAT.
- cvat-core / cvat-ui decode a mask shape's `points` as runs alternating background/foreground
  over the inclusive box the last four numbers give, placed at that box (as in
  tests/test_cvat_functions.py).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import yaml
from cvat_sdk.auto_annotation.driver import _DetectionFunctionContextImpl
from nuclio_sdk import Event
from nuclio_sdk.test import Platform
from scipy import ndimage

from conftest import ROOT
from polypseg.detection_job import build_detector, find_polyps
from polypseg.formats.cvat_mask import decode_cvat_mask
from polypseg.formats.rasterise import fill_polygon
from polypseg.images import read_image, read_mask
from polypseg.metrics import score_masks
from polypseg.predictors import build_predictor
from polypseg.prompts import Prompt

FUNCTION = ROOT / "serverless" / "polyp-detector"
# Validation frames (training/splits/kvasir-seg-val.txt) with one polyp each, which the
# detector finds at CVAT's usual threshold of 0.5.
FRAMES = ("cju1fuoa4wmc50835qfd11sp9", "cju2i6acqvo6l0799u20fift8", "cju1erep75us208553i4ofwwe")
THRESHOLD = 0.5
# A frame where the shipped detector sees faint regions beside the polyp (0.94, 0.83, 0.69, 0.06).
FAINT = "cju16b6ynq8e40988m8vx0xnj"


def load_main(tag: str = ""):
    """The function's main.py as nuclio loads it (a fresh module per call)."""
    name = f"cvat_main_polyp_detector{tag}"
    spec = importlib.util.spec_from_file_location(name, FUNCTION / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def call(platform: Platform, main, body: dict | bytes) -> tuple[int, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = Event(body=raw, content_type="application/json", method="POST", path="/")
    response = platform.call_handler(main.handler, event)
    return response.status_code, json.loads(response.body)


def payload(image: Path, threshold: float | None = THRESHOLD) -> dict:
    """What views.py sends a detector: the frame, and the threshold when it is non-zero."""
    body: dict = {"image": base64.b64encode(image.read_bytes()).decode()}
    if threshold:
        body["threshold"] = threshold
    return body


def server_shapes(answer: list, conv_mask_to_poly: bool = False) -> list[dict]:
    """The shapes CVAT's server saves from a detector answer for a task with a label "polyp":
    other labels dropped; a mask's 0/1 crop turned into run lengths (background first), the
    box kept; with conv_mask_to_poly, a mask that has `points` saved as that polygon."""
    saved = []
    for item in answer:
        if item["label"] != "polyp":
            continue
        if item["type"] == "mask" and conv_mask_to_poly and "points" in item:
            saved.append({"type": "polygon", "points": item["points"]})
        elif item["type"] == "mask":
            *values, xtl, ytl, xbr, ybr = item["mask"]
            flat = np.asarray(values, dtype=np.int64)
            edges = np.flatnonzero(np.diff(flat)) + 1
            runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
            if flat[0]:
                runs = [0, *runs]
            saved.append({"type": "mask", "points": [*runs, xtl, ytl, xbr, ybr]})
        else:
            saved.append({"type": item["type"], "points": item["points"]})
    return saved


def shape_mask(shape: dict, width: int, height: int) -> np.ndarray:
    """A saved shape as the UI draws it: a mask's runs over its inclusive box, or a polygon."""
    if shape["type"] == "polygon":
        return fill_polygon(np.asarray(shape["points"], dtype=np.float64), width, height)  # as CVAT fills it
    *runs, x1, y1, x2, y2 = (int(v) for v in shape["points"])
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    mask = np.zeros((height, width), dtype=bool)
    mask[y1 : y2 + 1, x1 : x2 + 1] = flat.reshape(y2 - y1 + 1, x2 - x1 + 1)
    return mask


@pytest.fixture(scope="module")
def function() -> tuple[Platform, object]:
    return Platform(), load_main()


@pytest.fixture(scope="module")
def core():
    """The core's own answer (`find_polyps`): the shipped detector's detections, one per
    outline, and the box model's outlines of them."""
    detector, predictor = build_detector(device="cpu"), build_predictor(device="cpu")

    def answer(image: np.ndarray, threshold: float | None) -> tuple[list, list[np.ndarray]]:
        polyps = find_polyps(detector, predictor, image, threshold).polyps
        return [p.detection for p in polyps], [p.mask for p in polyps]

    return answer


@pytest.mark.slow
@pytest.mark.parametrize("name", FRAMES)
def test_every_detected_polyp_comes_back_as_a_mask_on_the_polyp(function, core, kvasir, name) -> None:
    platform, main = function
    path = kvasir / "images" / f"{name}.jpg"
    image, truth = read_image(path), read_mask(kvasir / "masks" / f"{name}.jpg")
    height, width = truth.shape
    status, answer = call(platform, main, payload(path))
    assert status == 200, answer
    assert isinstance(answer, list) and answer
    assert all(item["label"] == "polyp" and item["type"] == "mask" for item in answer)
    masks = [shape_mask(shape, width, height) for shape in server_shapes(answer)]
    detections, expected = core(image, THRESHOLD)
    assert len(masks) == len(detections)  # one object per detection (none came out empty here)
    # Each mask is saved where its polyp is, and each is the core's own answer for its detection.
    for mask, own in zip(masks, expected, strict=True):
        assert score_masks(mask, own).iou > 0.99
    assert score_masks(np.logical_or.reduce(masks), truth).iou > 0.5
    confidences = [float(item["confidence"]) for item in answer]
    assert confidences == pytest.approx([d.score for d in detections], abs=1e-3)
    # "Convert masks to polygons": each polyp's outline (of its largest part), close to that part.
    polygons = server_shapes(answer, conv_mask_to_poly=True)
    assert [s["type"] for s in polygons] == ["polygon"] * len(masks)
    for polygon, mask in zip(polygons, masks, strict=True):
        labels, count = ndimage.label(mask)
        largest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])) if count > 1 else mask
        assert score_masks(shape_mask(polygon, width, height), largest).iou > 0.9


@pytest.mark.slow
def test_the_threshold_cvat_sends_is_the_score_floor(function, core, kvasir) -> None:
    platform, main = function
    path = kvasir / "images" / f"{FAINT}.jpg"
    image = read_image(path)
    detections, _ = core(image, 0.05)
    assert detections and max(d.score for d in detections) < 1.0
    status, answer = call(platform, main, payload(path, 1.0))
    assert (status, answer) == (200, [])
    # A low threshold finds more than CVAT's usual one: every faint region the detector sees,
    # less those where the box model finds no polyp in the box or outlines a polyp found better
    # (they give no object).
    status, low = call(platform, main, payload(path, 0.05))
    assert status == 200 and len(detections) > 1
    assert [float(item["confidence"]) for item in low] == pytest.approx(
        [d.score for d in detections], abs=1e-3
    )
    # No threshold (CVAT sends none for 0): the detector's own shipped floor.
    status, default = call(platform, main, payload(path, None))
    assert status == 200 and len(default) == len(core(image, None)[0])


def test_bad_input_is_refused_with_a_reason_and_the_function_goes_on(function, kvasir) -> None:
    platform, main = function
    good = payload(kvasir / "images" / f"{FRAMES[0]}.jpg", 1.0)
    refused = [
        ({"threshold": 0.5}, "no image"),
        ({"image": "not base64!"}, "base64"),
        ({"image": base64.b64encode(b"a text, not a picture").decode()}, "image"),
        ({**good, "threshold": 1.5}, "threshold"),
        ({**good, "threshold": -0.1}, "threshold"),
        ({**good, "threshold": "0.5"}, "threshold"),
        ({**good, "threshold": True}, "threshold"),
        (b"{not json", "JSON"),
        ([1, 2], "JSON object"),
    ]
    for body, reason in refused:
        raw = json.dumps(body).encode() if isinstance(body, list) else body
        status, answer = call(platform, main, raw)
        assert status == 400 and reason in answer["error"], (
            body if isinstance(body, bytes) else reason,
            answer,
        )
    status, answer = call(platform, main, good)
    assert (status, answer) == (200, [])


@pytest.mark.slow
def test_agent_detection_function_gives_the_same_masks(function, kvasir) -> None:
    from backends.cvat import agent_detector

    platform, main = function
    path = kvasir / "images" / f"{FRAMES[1]}.jpg"
    truth = read_mask(kvasir / "masks" / f"{FRAMES[1]}.jpg")
    height, width = truth.shape
    detection = agent_detector.create(device="cpu")
    (label,) = detection.spec.labels
    assert (label.name, label.id, label.type) == ("polyp", 0, "mask")
    pil = PIL.Image.open(path)
    # cvat_sdk's own context, as `cvat-cli task auto-annotate --conf-threshold 0.5` builds it.
    context = _DetectionFunctionContextImpl(frame_name=path.name, conf_threshold=THRESHOLD)
    shapes = detection.detect(context, pil)
    assert shapes and all(s.type.value == "mask" and s.label_id == 0 and s.frame == 0 for s in shapes)
    _, answer = call(platform, main, payload(path))
    served = [shape_mask(s, width, height) for s in server_shapes(answer)]
    for shape, mask in zip(shapes, served, strict=True):
        assert score_masks(decode_cvat_mask(shape.points, width, height), mask).iou > 0.99
    as_polygons = _DetectionFunctionContextImpl(
        frame_name=path.name, conf_threshold=THRESHOLD, conv_mask_to_poly=True
    )
    polygons = detection.detect(as_polygons, pil)
    assert [s.type.value for s in polygons] == ["polygon"] * len(shapes)
    outline = fill_polygon(np.asarray(polygons[0].points), width, height)
    assert score_masks(outline, truth).iou > 0.5
    # --conf-threshold replaces the detector's floor (this frame's best score is under 1).
    below_one = kvasir / "images" / f"{FRAMES[0]}.jpg"
    nothing = _DetectionFunctionContextImpl(frame_name=below_one.name, conf_threshold=1.0)
    assert detection.detect(nothing, PIL.Image.open(below_one)) == []


@pytest.mark.parametrize("name", ["function.yaml", "function-gpu.yaml"])
def test_function_yaml_is_what_cvat_reads_for_a_detector(name: str) -> None:
    main = (FUNCTION / "main.py").read_text()
    config = yaml.safe_load((FUNCTION / name).read_text())
    meta, spec = config["metadata"], config["spec"]
    annotations = meta["annotations"]
    assert meta["namespace"] == "cvat" and meta["name"].startswith("polypseg-detector")
    assert annotations["type"] == "detector"
    # views.py: labels from `spec` by name (unique), each with its shape type; "mask" maps onto a
    # task label of type mask, polygon or any.
    assert json.loads(annotations["spec"]) == [{"id": 1, "name": "polyp", "type": "mask"}]
    assert isinstance(annotations["name"], str) and isinstance(spec["description"], str)
    module, handler = spec["handler"].split(":")
    assert (
        module == "main" and f"def {handler}(context, event)" in main and "def init_context(context)" in main
    )
    trigger = spec["triggers"]["myHttpTrigger"]
    assert trigger["kind"] == "http" and trigger["maxWorkers"] >= 1
    assert trigger["attributes"]["maxRequestBodySize"] >= 16 << 20
    directives = " ".join(d["value"] for d in spec["build"]["directives"]["postCopy"])
    assert "/opt/nuclio/wheels/" in directives
    gpu = "nvidia.com/gpu" in spec.get("resources", {}).get("limits", {})
    assert gpu == (name == "function-gpu.yaml")
    device = {e["name"]: e["value"] for e in spec["env"]}["DEVICE"]
    assert device == ("cuda" if gpu else "cpu")


@pytest.mark.slow
def test_boxes_to_masks_detects_on_frames_without_a_box(core, kvasir, boxes) -> None:
    """`python -m backends.cvat.boxes_to_masks --detect`: a frame with a polyp box keeps its
    box's mask; a frame without one gets the detector's polyps, outlined by the box model."""
    from backends.cvat.boxes_to_masks import BoxesToMasks, FrameContext

    boxed, unboxed = FRAMES[2], FRAMES[1]
    images = {index: kvasir / "images" / f"{name}.jpg" for index, name in enumerate((boxed, unboxed))}
    detector, predictor = build_detector(device="cpu"), build_predictor(device="cpu")
    function = BoxesToMasks(predictor, {0: list(boxes[boxed])}, detector=detector, min_score=THRESHOLD)
    (from_box,) = function.detect(FrameContext(0, images[0].name), PIL.Image.open(images[0]))
    truth = read_mask(kvasir / "masks" / f"{boxed}.jpg")
    expected = predictor.predict(read_image(images[0]), Prompt(box=boxes[boxed][0])).mask
    height, width = truth.shape
    assert score_masks(decode_cvat_mask(from_box.points, width, height), expected).iou > 0.99
    detected = function.detect(FrameContext(1, images[1].name), PIL.Image.open(images[1]))
    _, own = core(read_image(images[1]), THRESHOLD)
    truth = read_mask(kvasir / "masks" / f"{unboxed}.jpg")
    height, width = truth.shape
    assert len(detected) == len(own)
    for shape, mask in zip(detected, own, strict=True):
        assert score_masks(decode_cvat_mask(shape.points, width, height), mask).iou > 0.99
    found = np.logical_or.reduce([decode_cvat_mask(s.points, width, height) for s in detected])
    assert score_masks(found, truth).iou > 0.5
    # Without --detect the same frame has no box, so nothing.
    plain = BoxesToMasks(predictor, {0: list(boxes[boxed])})
    assert plain.detect(FrameContext(1, images[1].name), PIL.Image.open(images[1])) == []


def test_boxes_to_masks_refuses_a_bad_min_score(capsys) -> None:
    from backends.cvat import boxes_to_masks

    common = ["--server-host", "http://localhost:1", "--task", "1", "--user", "u"]
    for extra, reason in (
        (["--detect", "--min-score", "1.5"], "'1.5' is not a score between 0 and 1"),
        (["--min-score", "0.5"], "go with --detect"),
    ):
        with pytest.raises(SystemExit) as stopped:
            boxes_to_masks.main(common + extra)
        assert stopped.value.code == 2 and reason in capsys.readouterr().err
