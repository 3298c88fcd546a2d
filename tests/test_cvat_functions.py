"""The CVAT functions' handlers, called through nuclio_sdk's own test platform with events built as
CVAT's lambda manager builds them, on real Kvasir-SEG frames and a synthetic polyp sequence;
tracker states in a real Redis server (Debian's redis-server) started here on loopback."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from nuclio_sdk import Event
from nuclio_sdk.test import Platform

from conftest import ONE_POLYP, ROOT, _free_port
from polypseg.datasets import load_folder_dataset
from polypseg.formats.cvat_mask import decode_cvat_mask, encode_cvat_mask
from polypseg.formats.polygons import Polygon, polygons_to_mask
from polypseg.images import read_image, read_mask
from polypseg.masks import mask_box
from polypseg.metrics import score_masks
from polypseg.predictors import build_predictor
from polypseg.prompts import Point, Prompt
from polypseg.video.synthetic import write_sequences

SERVERLESS = ROOT / "serverless"
FUNCTIONS = ("unet-interactor", "sam2-interactor", "mask-tracker")


def load_main(function: str, tag: str = ""):
    """A function's main.py as nuclio loads it (a fresh module per call)."""
    name = f"cvat_main_{function.replace('-', '_')}{tag}"
    spec = importlib.util.spec_from_file_location(name, SERVERLESS / function / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def call(platform: Platform, main, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = Event(body=raw, content_type="application/json", method="POST", path="/")
    response = platform.call_handler(main.handler, event)
    return response.status_code, json.loads(response.body)


def answer_mask(answer: dict, width: int, height: int) -> np.ndarray:
    """The mask CVAT's UI builds from an interactor's answer (crop rows placed at `bounds`)."""
    mask = np.zeros((height, width), dtype=bool)
    if answer["mask"]:
        x1, y1, x2, y2 = answer["bounds"]
        mask[y1 : y2 + 1, x1 : x2 + 1] = np.asarray(answer["mask"]) > 0
    return mask


@pytest.fixture(scope="module")
def polyp(kvasir: Path, boxes):
    box = boxes[ONE_POLYP][0]
    image = kvasir / "images" / f"{ONE_POLYP}.jpg"
    return image, read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg"), box


@pytest.fixture(scope="module")
def unet():
    return Platform(), load_main("unet-interactor")


def test_unet_interactor_box_to_mask(unet, polyp, core_mask) -> None:
    platform, main = unet
    image, truth, box = polyp
    height, width = truth.shape
    # startswith_box: the lambda manager has moved the first two positive points to obj_bbox.
    body = {
        "image": encoded(image),
        "pos_points": [],
        "neg_points": [],
        "obj_bbox": [[box.x1, box.y1], [box.x2, box.y2]],
        "threshold": 0.5,
    }
    status, answer = call(platform, main, body)
    assert status == 200, answer
    mask = answer_mask(answer, width, height)
    assert score_masks(mask, core_mask(image, (box.x1, box.y1, box.x2, box.y2))).iou > 0.99
    outline = polygons_to_mask([Polygon(np.asarray(answer["points"]))], width, height)
    assert score_masks(outline, mask).iou > 0.9
    assert answer["bounds"][2] < width and answer["bounds"][3] < height and 0 < answer["score"] <= 1


def test_interactor_bad_input_is_refused_with_a_reason(unet, polyp) -> None:
    platform, main = unet
    image, _, box = polyp
    good_box = [[box.x1, box.y1], [box.x2, box.y2]]
    cases = [
        (b"{not json", "not JSON"),
        ({"pos_points": [], "neg_points": [], "obj_bbox": good_box}, "no image"),
        ({"image": "%%%", "obj_bbox": good_box}, "not valid base64"),
        ({"image": base64.b64encode(b"not an image").decode(), "obj_bbox": good_box}, "not a readable image"),
        ({"image": encoded(image), "obj_bbox": [[10, 10], [10, 80]]}, "no area"),
        ({"image": encoded(image), "pos_points": [[50, 50]], "obj_bbox": None}, "needs a box"),
        ({"image": encoded(image), "obj_bbox": good_box, "pos_points": [["a", 1]]}, "not an [x, y] pair"),
        ({"image": encoded(image), "obj_bbox": good_box, "pos_points": [[5, 5]] * 200}, "too many points"),
    ]
    for body, reason in cases:
        status, answer = call(platform, main, body)
        assert status == 400 and reason in answer["error"], (reason, answer)
    status, _ = call(platform, main, {"image": encoded(image), "obj_bbox": good_box})
    assert status == 200  # the worker goes on


def test_sam2_interactor_with_clicks(monkeypatch, sam2_checkpoint: Path, polyp) -> None:
    """Random weights in the official format: the answer must be the model's own answer to the
    clicks where the user put them (not an accurate one)."""
    monkeypatch.setenv("POLYPSEG_CHECKPOINT", str(sam2_checkpoint))
    monkeypatch.setenv("POLYPSEG_SAM2_SIZE", "256")
    platform, main = Platform(), load_main("sam2-interactor")
    image, truth, box = polyp
    centre = [(box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2]
    body = {"image": encoded(image), "pos_points": [centre], "neg_points": [[5, 5]], "obj_bbox": None}
    status, answer = call(platform, main, body)
    assert status == 200, answer
    assert set(answer) == {"mask", "bounds", "points", "score", "model_version"}
    sam2 = build_predictor("sam2", sam2_checkpoint, "cpu", image_size=256)
    clicks = Prompt(points=(Point(*centre, True), Point(5, 5, False)))
    expected = sam2.predict(read_image(image), clicks).mask
    assert expected.any() and score_masks(answer_mask(answer, *truth.shape[::-1]), expected).iou > 0.99
    status, answer = call(platform, main, {"image": encoded(image), "pos_points": [], "neg_points": []})
    assert status == 400 and "box or at least one positive click" in answer["error"]


# A held-out polyp whose synthetic path (seed 5) carries it well away from where it started
# (a shape left standing keeps mean IoU 0.40) while it stays in view.
MOVING = "cju1erep75us208553i4ofwwe"


@pytest.fixture(scope="module")
def sequence(kvasir: Path, tmp_path_factory) -> tuple[list[Path], list[np.ndarray]]:
    samples = load_folder_dataset(kvasir / "images", kvasir / "masks", None, [MOVING])
    folder = write_sequences(samples, tmp_path_factory.mktemp("seq"), length=8, seed=5)[0]
    frames = sorted((folder / "frames").iterdir())
    masks = [read_mask(p) for p in sorted((folder / "masks").iterdir())]
    return frames, masks


def shape_of(kind: str, mask: np.ndarray):
    box = mask_box(mask)
    if kind == "rectangle":
        return [box.x1, box.y1, box.x2, box.y2]  # CVAT's UI sends bare rectangle points
    if kind == "mask":
        return {"type": "mask", "points": encode_cvat_mask(mask)}
    from polypseg.formats.polygons import mask_to_polygons

    return {"type": "polygon", "points": mask_to_polygons(mask)[0].outer.reshape(-1).tolist()}


def shape_mask(shape, width: int, height: int) -> np.ndarray:
    points = shape["points"] if isinstance(shape, dict) else shape
    kind = shape["type"] if isinstance(shape, dict) else "rectangle"
    if kind == "mask":
        return decode_cvat_mask(points, width, height)
    if kind == "polygon":
        return polygons_to_mask([Polygon(np.asarray(points).reshape(-1, 2))], width, height)
    x1, y1, x2, y2 = (int(round(v)) for v in points)
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def truth_in_kind(kind: str, mask: np.ndarray) -> np.ndarray:
    return shape_mask(shape_of(kind, mask), mask.shape[1], mask.shape[0])


@pytest.mark.parametrize("kind", ["rectangle", "polygon", "mask"])
def test_tracker_follows_the_polyp(kind: str, sequence, monkeypatch) -> None:
    monkeypatch.delenv("CVAT_REDIS_HOST", raising=False)
    frames, masks = sequence
    platform, main = Platform(), load_main("mask-tracker", kind)
    height, width = masks[0].shape
    shapes = [shape_of(kind, masks[0])]
    status, answer = call(platform, main, {"image": encoded(frames[0]), "shapes": shapes, "states": None})
    assert status == 200, answer
    states = json.loads(json.dumps(answer["states"]))  # CVAT keeps them as JSON
    ious = []
    for frame, truth in zip(frames[1:], masks[1:], strict=True):
        status, answer = call(
            platform, main, {"image": encoded(frame), "shapes": answer["shapes"], "states": states}
        )
        assert status == 200, answer
        states = json.loads(json.dumps(answer["states"]))
        (shape,) = answer["shapes"]
        assert isinstance(shape, dict) == (kind != "rectangle")  # answered in the form it came
        ious.append(score_masks(shape_mask(shape, width, height), truth_in_kind(kind, truth)).iou)
    # A "tracker" that hands back the first shape unchanged scores this; following must beat it.
    start = truth_in_kind(kind, masks[0])
    standing = [score_masks(start, truth_in_kind(kind, truth)).iou for truth in masks[1:]]
    assert np.mean(ious) > np.mean(standing) + 0.2, (ious, standing)


def test_tracker_refuses_bad_states(sequence, monkeypatch) -> None:
    monkeypatch.delenv("CVAT_REDIS_HOST", raising=False)
    frames, masks = sequence
    platform, main = Platform(), load_main("mask-tracker", "bad")
    shapes = [shape_of("rectangle", masks[0])]
    body = {"image": encoded(frames[1]), "shapes": shapes, "states": [{"token": "unknown", "step": 3}]}
    status, answer = call(platform, main, body)
    assert status == 410 and "expired or is unknown" in answer["error"]
    status, answer = call(platform, main, body | {"states": [None, None]})
    assert status == 400 and "one per shape" in answer["error"]
    status, answer = call(platform, main, {"image": encoded(frames[0]), "shapes": [[10, 10, 10, 40]]})
    assert status == 400 and "no area" in answer["error"]
    status, answer = call(
        platform, main, {"image": encoded(frames[0]), "shapes": [{"type": "ellipse", "points": [1, 2, 3, 4]}]}
    )
    assert status == 400 and "cannot be tracked" in answer["error"]
    status, answer = call(platform, main, {"image": encoded(frames[0]), "shapes": shapes})
    assert status == 200  # a real state, then a garbled step in it
    garbled = [answer["states"][0] | {"step": "three"}]
    status, answer = call(platform, main, body | {"states": garbled})
    assert status == 400 and "'step' must be a whole number" in answer["error"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[int]:
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not installed (make services)"
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=10)


CONTINUE = """
import base64, json, sys
from pathlib import Path
from nuclio_sdk import Event
from nuclio_sdk.test import Platform
sys.path.insert(0, {tests!r})
from test_cvat_functions import load_main
main = load_main("mask-tracker", "other")
body = json.loads(sys.stdin.read())
body["image"] = base64.b64encode(Path(body.pop("frame")).read_bytes()).decode()
event = Event(body=json.dumps(body).encode(), method="POST", path="/")
response = Platform().call_handler(main.handler, event)
print(json.dumps({{"status": response.status_code, "body": json.loads(response.body)}}))
"""


def test_a_track_continues_in_another_process_through_redis(redis_server: int, sequence, monkeypatch) -> None:
    frames, masks = sequence
    monkeypatch.setenv("CVAT_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("CVAT_REDIS_PORT", str(redis_server))
    platform, main = Platform(), load_main("mask-tracker", "redis")
    shapes = [shape_of("rectangle", masks[0])]
    status, answer = call(platform, main, {"image": encoded(frames[0]), "shapes": shapes, "states": None})
    assert status == 200

    script = CONTINUE.format(tests=str(Path(__file__).parent))
    request = json.dumps({"frame": str(frames[1]), "shapes": answer["shapes"], "states": answer["states"]})
    run = subprocess.run(
        [sys.executable, "-c", script], input=request, capture_output=True, text=True, timeout=300, check=True
    )
    other = json.loads(run.stdout.strip().splitlines()[-1])
    assert other["status"] == 200, other
    height, width = masks[1].shape
    found = shape_mask(other["body"]["shapes"][0], width, height)
    truth = truth_in_kind("rectangle", masks[1])
    standing = score_masks(truth_in_kind("rectangle", masks[0]), truth).iou
    assert score_masks(found, truth).iou > standing + 0.2  # the box moved with the polyp

    monkeypatch.setenv("POLYPSEG_TRACK_TTL", "1")
    platform, main = Platform(), load_main("mask-tracker", "short")
    status, answer = call(platform, main, {"image": encoded(frames[0]), "shapes": shapes, "states": None})
    time.sleep(1.5)  # past the time-to-live: the state is gone, and the error says so
    status, answer = call(platform, main, {"image": encoded(frames[1]), **answer})
    assert status == 410 and "expired" in answer["error"]


def test_agent_functions(sequence, polyp, core_mask) -> None:
    import PIL.Image

    from serverless.cvat import agent_interactor, agent_tracker
    from serverless.cvat.agents import TrackableShape

    frames, masks = sequence
    tracking = agent_tracker.create()
    assert tracking.spec.supported_shape_types == {"rectangle", "polygon", "mask"}
    first = tracking.preprocess_image(None, PIL.Image.open(frames[0]))
    shape = shape_of("mask", masks[0])
    state = tracking.init_tracking_state(None, first, TrackableShape(type="mask", points=shape["points"]))
    found = tracking.track(None, tracking.preprocess_image(None, PIL.Image.open(frames[1])), state)
    assert found is not None and found.type == "mask"
    height, width = masks[1].shape
    standing = score_masks(masks[0], masks[1]).iou
    assert score_masks(decode_cvat_mask(found.points, width, height), masks[1]).iou > standing + 0.2

    interaction = agent_interactor.create()
    assert interaction.spec.min_bounding_boxes == 1
    image, truth, box = polyp

    class Prompts:
        pos_points, neg_points = (), ()
        bounding_box = ((box.x1, box.y1), (box.x2, box.y2))

    pp = interaction.preprocess_image(None, PIL.Image.fromarray(read_image(image)))
    (result,) = interaction.detect(None, pp, Prompts())
    assert result.type == "mask"
    expected = core_mask(image, (box.x1, box.y1, box.x2, box.y2))
    assert score_masks(decode_cvat_mask(result.points, *truth.shape[::-1]), expected).iou > 0.99


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_yaml_is_what_cvat_reads(function: str) -> None:
    main = (SERVERLESS / function / "main.py").read_text()
    for name in ("function.yaml", "function-gpu.yaml"):
        config = yaml.safe_load((SERVERLESS / function / name).read_text())
        meta, spec = config["metadata"], config["spec"]
        annotations = meta["annotations"]
        assert meta["namespace"] == "cvat" and meta["name"].startswith("polypseg-")
        assert annotations["type"] == ("tracker" if function == "mask-tracker" else "interactor")
        assert {"name", "version", "help_message", "spec"} <= set(annotations)
        assert json.loads(annotations["spec"]) == [{"id": 1, "name": "polyp", "type": "mask"}]
        if annotations["type"] == "interactor":
            assert annotations["min_pos_points"] == 0 and annotations["min_neg_points"] == 0
            assert annotations.get("startswith_box") or annotations.get("startswith_box_optional")
        module, handler = spec["handler"].split(":")
        assert (
            module == "main"
            and f"def {handler}(context, event)" in main
            and "def init_context(context)" in main
        )
        trigger = spec["triggers"]["myHttpTrigger"]
        assert trigger["kind"] == "http" and trigger["maxWorkers"] >= 1
        assert trigger["attributes"]["maxRequestBodySize"] >= 16 << 20
        assert spec["eventTimeout"].endswith("s")
        directives = " ".join(d["value"] for d in spec["build"]["directives"]["postCopy"])
        assert "/opt/nuclio/wheels/" in directives  # the polypseg wheel deploy.sh puts there
        assert ("nvidia.com/gpu" in spec.get("resources", {}).get("limits", {})) == (
            name == "function-gpu.yaml"
        )


def test_boxes_to_masks_detection_function(polyp, core_mask) -> None:
    import PIL.Image
    from cvat_sdk.auto_annotation import DetectionFunctionContext

    from serverless.cvat.boxes_to_masks import BoxesToMasks

    class Context(DetectionFunctionContext):
        frame_name = f"{ONE_POLYP}.jpg"
        conf_threshold = None
        conv_mask_to_poly = False

    image, truth, box = polyp
    function = BoxesToMasks(build_predictor(), {f"{ONE_POLYP}.jpg": [box]})
    assert [label.name for label in function.spec.labels] == ["polyp"]
    (shape,) = function.detect(Context(), PIL.Image.open(image))
    assert shape.type.value == "mask"
    expected = core_mask(image, (box.x1, box.y1, box.x2, box.y2))
    assert score_masks(decode_cvat_mask(shape.points, *truth.shape[::-1]), expected).iou > 0.99

    class Other(Context):
        frame_name = "no-boxes.jpg"

    assert function.detect(Other(), PIL.Image.open(image)) == []
