"""Retraining: the model store and its current pointer, the dataset store, the
retrain run (promote, refuse a worse model, one at a time, killed half-way)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import KVASIR, retrain_running
from polypseg import retraining
from polypseg.checkpoints import load_checkpoint
from polypseg.data_store import DatasetStore, LabelledImage, LabelledSequence, SequenceFrame, entry_key
from polypseg.errors import CheckpointError, DatasetError, PolypsegError
from polypseg.images import read_mask
from polypseg.model_store import CurrentModel, ModelStore, ModelStoreError
from polypseg.predictors import default_checkpoint
from polypseg.retraining import Pending, RetrainLock, RetrainSettings, parse_interval, retrain, retrain_every

SOURCE = "test:kvasir"
# Another process asking for a retrain (a webhook's, the scheduled trainer's); prints its status.
REQUEST = (
    "import sys; from pathlib import Path; from polypseg.retraining import RetrainSettings, retrain; "
    "print(retrain(RetrainSettings(Path(sys.argv[1]), Path(sys.argv[2]), device='cpu')).status)"
)


def request_retrain(models: Path, dataset: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", REQUEST, str(models), str(dataset)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def item(name: str, annotation: str = "1", updated: str = "t1") -> LabelledImage:
    image = (KVASIR / "images" / f"{name}.jpg").read_bytes()
    return LabelledImage(
        SOURCE, name, annotation, updated, image, ".jpg", read_mask(KVASIR / "masks" / f"{name}.jpg")
    )


def names_with_validation(count: int) -> list[str]:
    """`count` Kvasir names whose store split has at least two validation images."""
    names = sorted(p.stem for p in (KVASIR / "images").iterdir())
    import hashlib

    from polypseg.data_store import VALIDATION_SHARE

    def is_val(name: str) -> bool:
        return int(hashlib.sha1(entry_key(SOURCE, name).encode()).hexdigest(), 16) % VALIDATION_SHARE == 0

    val = [n for n in names if is_val(n)][:2]
    return val + [n for n in names if not is_val(n)][: count - 2]


def test_model_store_versions_promote_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.current() is None and store.list_versions() == []
    first = store.add(default_checkpoint(), {"iou": 0.8}, "shipped")
    second = store.add(default_checkpoint(), {"iou": 0.9}, "retrained", parent=first.id)
    assert [v.id for v in store.list_versions()] == sorted([first.id, second.id])
    assert not list((tmp_path / "models" / "versions").glob(".staging-*"))
    # A process killed between writing a version's files and renaming its folder leaves this:
    half = tmp_path / "models" / "versions" / ".staging-x1y2"
    half.mkdir()
    (half / "info.json").write_text((second.path.parent / "info.json").read_text())
    assert [v.id for v in store.list_versions()] == sorted([first.id, second.id])
    store.promote(first.id, "start")
    store.promote(second.id, "better")
    with open(tmp_path / "models" / "history.jsonl", "a") as history:
        history.write('{"at": "2026-11-29T10:00:00", "curr')  # torn by a crash mid-append
    assert store.current().id == second.id and store.current().metrics == {"iou": 0.9}
    assert store.rollback().id == first.id
    with pytest.raises(ModelStoreError, match="no model version"):
        store.promote("nope", "x")
    with pytest.raises(ModelStoreError, match="no earlier version"):
        store.rollback()


def test_current_model_follows_the_pointer(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a = store.add(default_checkpoint(), {}, "a")
    b = store.add(default_checkpoint(), {}, "b")
    store.promote(a.id, "start")
    loads: list[Path | None] = []

    def load(path):
        loads.append(path)
        return f"predictor of {path.parent.name}"

    current = CurrentModel(store, load, interval=0.0)  # type: ignore[arg-type]
    held = current.get()  # a request in flight holds this one
    store.promote(b.id, "new")
    assert current.get() == f"predictor of {b.id}" and held == f"predictor of {a.id}"
    assert loads == [a.path, b.path]
    assert current.get() == f"predictor of {b.id}" and len(loads) == 2  # no reload without a change


def test_a_server_for_another_architecture_keeps_its_own_model(
    tmp_path: Path, sam2_checkpoint: Path, caplog
) -> None:
    """A SAM2 function pointed at a MODEL_DIR whose current version is a retrained U-Net starts
    on its configured SAM2 model and says why, instead of failing to start."""
    from polypseg.predictors import build_predictor
    from polypseg.predictors.sam2 import Sam2Predictor

    store = ModelStore(tmp_path)
    store.promote(store.add(default_checkpoint(), {}, "a U-Net").id, "start")
    with caplog.at_level("ERROR", logger="polypseg.model_store"):
        current = CurrentModel(
            store, lambda path: build_predictor("sam2", path, "cpu"), fallback=sam2_checkpoint
        )
    assert isinstance(current.get(), Sam2Predictor)
    assert "holds a clickunet model, not sam2" in caplog.text
    with pytest.raises(CheckpointError):  # its own model broken: that is an error to stop on
        CurrentModel(None, lambda path: build_predictor("sam2", path, "cpu"), fallback=default_checkpoint())


def test_dataset_store_keeps_every_image_trainable(tmp_path: Path) -> None:
    """Label Studio and CVAT may hold WebP or GIF images: the store keeps them as PNG, which the
    training reads; a mask that does not fit its image is refused with a reason."""
    import io

    from PIL import Image

    from polypseg.datasets import load_folder_dataset
    from polypseg.images import read_image

    name = names_with_validation(1)[0]
    webp = io.BytesIO()
    Image.open(KVASIR / "images" / f"{name}.jpg").save(webp, format="WEBP", lossless=True)
    store = DatasetStore(tmp_path)
    store.put(LabelledImage(SOURCE, name, "1", "t1", webp.getvalue(), ".webp", item(name).mask))
    (sample,) = load_folder_dataset(tmp_path / "images", tmp_path / "masks")
    assert sample.image_path.suffix == ".png"
    assert np.array_equal(read_image(sample.image_path), read_image(KVASIR / "images" / f"{name}.jpg"))
    store.put(item(name, "2", "t2"))  # the same task, now a JPEG: no stale PNG left behind
    assert [p.suffix for p in (tmp_path / "images").iterdir()] == [".jpg"]
    with pytest.raises(DatasetError, match=r"task x: the mask does not fit the \d+x\d+ image"):
        store.put(LabelledImage(SOURCE, "x", "1", "t", item(name).image, ".jpg", np.zeros((5, 5), bool)))


def test_dataset_store_is_incremental_and_idempotent(tmp_path: Path) -> None:
    names = names_with_validation(5)
    store = DatasetStore(tmp_path)
    for name in names:
        store.put(item(name))
    assert len(store.samples()) == 5 and len(store.samples("val")) == 2
    assert store.holds(SOURCE, names[0], "1") and not store.holds(SOURCE, names[0], "2")
    fingerprint = store.fingerprint()
    store.put(item(names[0]))  # the same annotation again: nothing new
    reopened = DatasetStore(tmp_path)
    assert reopened.index == store.index and len(list((tmp_path / "images").iterdir())) == 5
    assert reopened.fingerprint() == fingerprint
    reopened.put(item(names[1], annotation="2", updated="t2"))  # a corrected annotation
    assert reopened.fingerprint() != fingerprint
    fingerprint = reopened.fingerprint()
    assert reopened.remove_missing(SOURCE, set(names[1:])) == [entry_key(SOURCE, names[0])]
    assert reopened.fingerprint() != fingerprint
    assert len(reopened.samples()) == 4 and len(list((tmp_path / "masks").iterdir())) == 4
    assert not [p for p in (tmp_path / "masks").iterdir() if p.name.startswith(entry_key(SOURCE, names[0]))]
    broken = LabelledImage(SOURCE, "x", "1", "t", b"not an image", ".jpg", np.zeros((2, 2), bool))
    with pytest.raises(Exception, match="not a readable image"):
        store.put(broken)
    assert entry_key(SOURCE, "x") not in store.index


def test_an_update_stopped_between_its_files_leaves_the_earlier_entry_whole(
    tmp_path: Path, monkeypatch
) -> None:
    """A corrected mask whose pull stops after the image is written (killed, disk full): the
    index still pairs the earlier image with the earlier mask; once written whole, the update's
    files replace them and the earlier ones are gone."""
    import polypseg.data_store

    (name,) = names_with_validation(1)[:1]
    key = entry_key(SOURCE, name)
    store = DatasetStore(tmp_path)
    store.put(item(name))
    before = dict(store.index[key])
    import dataclasses
    import hashlib
    import io

    from PIL import Image

    again = io.BytesIO()  # the frame exported anew (another encoder), and its mask corrected
    Image.open(KVASIR / "images" / f"{name}.jpg").save(again, format="JPEG", quality=80)
    corrected = dataclasses.replace(item(name, "2", "t2"), image=again.getvalue())
    corrected.mask[: corrected.mask.shape[0] // 2] = False  # the annotator removed the top half

    def stopped(*args: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(polypseg.data_store, "write_mask", stopped)
    with pytest.raises(OSError):
        store.put(corrected)
    monkeypatch.undo()
    (sample,) = DatasetStore(tmp_path).samples()
    assert DatasetStore(tmp_path).index[key] == before
    assert hashlib.sha256(sample.image_path.read_bytes()).hexdigest() == before["digest"]  # that image
    assert np.array_equal(read_mask(sample.mask_path), item(name).mask)  # ... with its mask
    store.put(corrected)
    (sample,) = DatasetStore(tmp_path).samples()
    assert np.array_equal(read_mask(sample.mask_path), corrected.mask)
    assert [p.name for p in (tmp_path / "masks").iterdir()] == [sample.mask_path.name]


def test_the_index_is_saved_before_files_are_deleted(tmp_path: Path) -> None:
    """A process stopped between saving the index and deleting files leaves files the index does
    not list (which training never reads), not an index that lists missing files. A deletion
    that fails (here: a folder where the file was) stands in for the process stopped there."""
    import io

    from PIL import Image

    first, second = names_with_validation(3)[1:]
    store = DatasetStore(tmp_path)
    png = io.BytesIO()
    Image.open(KVASIR / "images" / f"{first}.jpg").save(png, format="PNG")
    store.put(LabelledImage(SOURCE, first, "1", "t1", png.getvalue(), ".gif", item(first).mask))
    old_image = tmp_path / "images" / store.index[entry_key(SOURCE, first)]["image"]
    old_image.unlink()
    old_image.mkdir()  # cannot be unlinked
    with pytest.raises(OSError):
        store.put(item(first, "2", "t2"))  # the same task, now a JPEG
    assert DatasetStore(tmp_path).index[entry_key(SOURCE, first)]["image"].endswith(".jpg")

    store.put(item(second))
    mask = tmp_path / "masks" / store.index[entry_key(SOURCE, second)]["mask"]
    mask.unlink()
    mask.mkdir()
    with pytest.raises(OSError):
        store.remove_missing(SOURCE, {first})
    assert set(DatasetStore(tmp_path).index) == {entry_key(SOURCE, first)}


def sequence(fingerprint: str) -> LabelledSequence:
    names = names_with_validation(4)[2:]
    frames = [
        SequenceFrame(
            number,
            ".jpg",
            lambda name=name: (KVASIR / "images" / f"{name}.jpg").read_bytes(),
            lambda name=name: read_mask(KVASIR / "masks" / f"{name}.jpg"),
        )
        for number, name in enumerate(names)
    ]
    return LabelledSequence("test:video", fingerprint, "t1", frames)


def test_a_sequence_left_unlisted_is_replaced(tmp_path: Path) -> None:
    """A process killed between renaming a sequence into place and saving sequences.json leaves
    a folder that sequences.json does not list; the next pull replaces it instead of failing on
    it for ever."""
    DatasetStore(tmp_path).put_sequence(sequence("a"))
    (tmp_path / "sequences.json").write_text("{}")  # as if killed before the save
    store = DatasetStore(tmp_path)
    store.put_sequence(sequence("b"))
    (entry,) = DatasetStore(tmp_path).sequences.values()
    assert entry["fingerprint"] == "b" and len(list((tmp_path / entry["folder"] / "frames").iterdir())) == 2
    assert (
        tmp_path / entry["folder"]
    ).stat().st_mode & 0o055 == 0o055  # a trainer run as another user reads it
    assert store.remove_sequence("test:video") and not (tmp_path / entry["folder"]).exists()


@pytest.fixture()
def filled_store(tmp_path: Path) -> Path:
    store = DatasetStore(tmp_path / "dataset")
    for name in names_with_validation(10):
        store.put(item(name))
    return tmp_path / "dataset"


@pytest.mark.slow  # trains (minutes on two CPU cores)
def test_retrain_promotes_then_refuses_a_worse_model(filled_store: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    # An image and mask that the index does not list (a pull stopped half-way): not trained on.
    shutil.copy(KVASIR / "images" / "cju0qkwl35piu0993l0dewei2.jpg", filled_store / "images" / "orphan.jpg")
    shutil.copy(KVASIR / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", filled_store / "masks" / "orphan.jpg")
    settings = RetrainSettings(models, filled_store, epochs=1, max_steps=1, tolerance=0.05, device="cpu")
    result = retrain(settings)
    assert result.status == "promoted", result
    store = ModelStore(models)
    assert store.current().id == result.version and len(store.list_versions()) == 2  # shipped + new
    _, metadata, _ = load_checkpoint(store.current().path)
    assert metadata["training"]["train_images"] == len(DatasetStore(filled_store).samples("train")) == 8
    again = retrain(settings)
    assert again.status == "skipped" and "no label added, changed or removed" in again.reason
    wrecked = retrain(  # the same labels, so forced
        RetrainSettings(
            models, filled_store, epochs=1, max_steps=1, lr=1e6, tolerance=0.0, device="cpu", force=True
        )
    )
    assert wrecked.status == "kept" and "stays" in wrecked.reason, wrecked
    assert store.current().id == result.version  # the worse model is kept aside, not served
    assert wrecked.metrics["iou"] < wrecked.metrics["current_iou"]
    # Each run keeps its log, not its snapshots: the versions hold the models.
    runs = sorted((models / "runs").iterdir())
    assert len(runs) == 2 and list((models / "runs").glob("*/*.pt")) == []
    assert all((run / "log.csv").is_file() for run in runs)


def test_one_retrain_at_a_time_and_requests_are_queued(filled_store: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    with retrain_running(models):
        result = retrain(RetrainSettings(models, filled_store, max_steps=1, device="cpu"))
        assert result.status == "queued" and (models / "retrain.pending").exists()
        forced = retrain(RetrainSettings(models, filled_store, max_steps=1, device="cpu", force=True))
        assert forced.status == "queued"
    lock = RetrainLock(models)
    assert lock.acquire()  # the holder's death released it
    # Both requests are there for the holder, and the second's --force with them.
    assert lock.take_pending() == Pending(asked=True, force=True)
    assert lock.take_pending() == Pending()
    lock.release()


def hold_in_another_process(code: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_request_during_a_retrain_brings_its_labels_and_records_itself(
    filled_store: Path, tmp_path: Path
) -> None:
    """While another process retrains, a request pulls its own sources (once the store is not
    being trained on: here it is free), does not train, records itself and returns; the running
    retrain trains once more on what it brought."""
    models = tmp_path / "models"
    pulls: list[int] = []
    with retrain_running(models):
        settings = RetrainSettings(models, filled_store, max_steps=1, device="cpu")
        retrain_every(settings, None, lambda: pulls.append(1) or True)
    assert pulls == [1] and (models / "retrain.pending").read_text() == "retrain\n"


def test_a_request_pulls_only_once_the_running_round_lets_go_of_the_store(tmp_path: Path) -> None:
    models, dataset, released = tmp_path / "models", tmp_path / "dataset", tmp_path / "released"
    holder = hold_in_another_process(
        "from pathlib import Path; import time\n"
        "from polypseg.data_store import store_lock; from polypseg.retraining import RetrainLock\n"
        f"lock = RetrainLock(Path({str(models)!r}))\nassert lock.acquire()\n"
        f"with store_lock({str(dataset)!r}):\n    print('locked', flush=True)\n    time.sleep(1.5)\n"
        f"    Path({str(released)!r}).touch()\n"
        "time.sleep(60)  # still retraining: the request is queued for it"
    )
    seen: list[bool] = []
    try:
        result = retrain(RetrainSettings(models, dataset), lambda: seen.append(released.exists()) or True)
    finally:
        holder.kill()
        holder.wait()
    assert seen == [True] and result.status == "queued"


def test_retrains_of_two_model_folders_take_turns_on_one_store(tmp_path: Path) -> None:
    """A retrain of another MODEL_DIR on the same store waits for the store before it pulls."""
    dataset, released = tmp_path / "dataset", tmp_path / "released"
    holder = hold_in_another_process(
        "from polypseg.data_store import store_lock; from pathlib import Path; import time\n"
        f"with store_lock({str(dataset)!r}):\n    print('locked', flush=True)\n    time.sleep(1.5)\n"
        f"    Path({str(released)!r}).touch()"
    )
    seen: list[bool] = []
    try:
        result = retrain(
            RetrainSettings(tmp_path / "other", dataset), lambda: seen.append(released.exists()) or True
        )
    finally:
        holder.wait(timeout=60)
    assert seen == [True] and result.status == "skipped"  # an empty store: nothing to train


def test_the_holder_pulls_again_for_a_request_made_during_its_round(tmp_path: Path) -> None:
    models, dataset = tmp_path / "models", tmp_path / "dataset"
    answers: list[str] = []

    def pull() -> bool:
        if not answers:
            answers.append(request_retrain(models, dataset))  # another process, while this one pulls
        return True

    settings = RetrainSettings(models, dataset, device="cpu")
    assert retrain(settings, pull).status == "skipped"
    assert answers == ["queued"] and not (models / "retrain.pending").exists()


def test_a_request_made_just_before_the_release_is_run(tmp_path: Path, monkeypatch) -> None:
    """A request that comes after the holder's last look at `pending` but before it lets go of
    the lock finds the lock held and only records itself: the holder runs it after letting go."""
    models, dataset = tmp_path / "models", tmp_path / "dataset"
    answers: list[str] = []

    class LateRequest(RetrainLock):
        def release(self) -> None:
            if self._handle is not None and not answers:
                answers.append(request_retrain(models, dataset))
            super().release()

    monkeypatch.setattr(retraining, "RetrainLock", LateRequest)
    pulls: list[int] = []
    retrain_every(RetrainSettings(models, dataset, device="cpu"), None, lambda: pulls.append(1) or True)
    assert answers == ["queued"] and len(pulls) == 2 and not (models / "retrain.pending").exists()


def test_promotes_only_what_is_not_worse_by_default(tmp_path: Path) -> None:
    """A tolerance would let round after round drift down, each a little worse than the last."""
    from polypseg.cli import build_parser

    assert RetrainSettings(tmp_path, tmp_path).tolerance == 0
    args = build_parser().parse_args(["retrain", "--model-dir", str(tmp_path), "--dataset", str(tmp_path)])
    assert args.tolerance == 0


def test_a_rollback_during_training_is_not_undone(filled_store: Path, tmp_path: Path, monkeypatch) -> None:
    """An admin rolls back while a retrain from the rolled-back version trains: its candidate,
    as good as that version, is kept aside, not promoted over the admin's choice. (The training
    is a copy of the starting model, so that only the promotion is under test.)"""
    models = tmp_path / "models"
    store = ModelStore(models)
    v4 = store.promote(store.add(default_checkpoint(), {}, "v4").id, "v4")
    v5 = store.promote(store.add(default_checkpoint(), {}, "v5").id, "v5")

    def train_while_admin_rolls_back(base: Path, settings: RetrainSettings, out: Path, *rest) -> Path:
        rollback = [sys.executable, "-m", "polypseg.cli", "models", "rollback", "--model-dir", str(models)]
        subprocess.run(rollback, check=True, capture_output=True, timeout=120)
        return Path(shutil.copy(base, out / "best.pt"))

    monkeypatch.setattr(retraining, "_train", train_while_admin_rolls_back)
    result = retrain(RetrainSettings(models, filled_store, device="cpu"))
    assert result.status == "kept" and "served model changed during training" in result.reason, result
    assert ModelStore(models).current().id == v4.id  # the admin's choice stands
    assert result.version and store.get(result.version).info["parent"] == v5.id  # kept aside


def test_intervals() -> None:
    assert parse_interval("24h") == 86400 and parse_interval("30m") == 1800 and parse_interval("90") == 90
    for bad in ("", "5x", "h", "0", "-1h", "inf", "1e309s", "nan", "400d"):
        with pytest.raises(PolypsegError, match="is not an interval"):
            parse_interval(bad)


def test_a_failing_scheduled_round_does_not_end_the_schedule(tmp_path: Path, caplog) -> None:
    """A broken dataset index fails each round; the schedule logs it and goes on (an unscheduled
    retrain says so at once)."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "index.json").write_text("{ half written")
    settings = RetrainSettings(tmp_path / "models", dataset, device="cpu")
    pulls = []
    with caplog.at_level("ERROR", logger="polypseg.retraining"):
        retrain_every(settings, 0.01, lambda: pulls.append(1) or True, rounds=3)
    assert len(pulls) == 3
    assert [r.message for r in caplog.records].count(
        "this retrain round failed; the served model is unchanged"
    ) == 3
    with pytest.raises(DatasetError, match="index.json: not a readable dataset index"):
        retrain_every(settings, None, lambda: True)


@pytest.mark.slow
def test_a_killed_retrain_leaves_model_and_data_intact(filled_store: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    command = [
        sys.executable,
        "-m",
        "polypseg.cli",
        "retrain",
        "--model-dir",
        str(models),
        "--dataset",
        str(filled_store),
    ]
    index_before = (filled_store / "index.json").read_bytes()
    process = subprocess.Popen(
        [*command, "--epochs", "50", "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not list((models / "runs").glob("*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)  # kill it in the middle of training, once it has written a snapshot
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = ModelStore(models)
    served = store.current()
    assert served is not None and served.info["note"].startswith("the model served before")
    assert len(store.list_versions()) == 1  # no half-made version
    assert (filled_store / "index.json").read_bytes() == index_before
    finished = subprocess.run(
        [*command, "--epochs", "1", "--max-steps", "1", "--tolerance", "0.05", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    assert "promoted" in finished.stderr or "kept" in finished.stderr  # the lock died with the killed run
    assert len(ModelStore(models).list_versions()) == 2


@pytest.mark.slow  # the CLI in five fresh processes
def test_models_command(filled_store: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "m")
    a = store.add(default_checkpoint(), {"iou": 0.5}, "a")
    b = store.add(default_checkpoint(), {"iou": 0.6}, "b")
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "polypseg.cli", "models", *args, "--model-dir", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run("promote", a.id).returncode == 0 and run("promote", b.id).returncode == 0
    listed = run("list").stdout
    assert f"* {b.id}" in listed and f"  {a.id}" in listed
    assert run("rollback").returncode == 0 and store.current().id == a.id
    refused = run("promote", "missing")
    assert refused.returncode == 2 and "no model version" in refused.stderr


@pytest.mark.slow  # trains (minutes on two CPU cores)
def test_retrain_a_sam2_model(filled_store: Path, tmp_path: Path, sam2_checkpoint: Path) -> None:
    """Where the served model is SAM2, retraining fine-tunes SAM2 (at the model's own input size)."""
    import torch

    from polypseg.checkpoints import load_checkpoint, save_checkpoint

    state, _, _ = load_checkpoint(sam2_checkpoint)
    small = tmp_path / "sam2-small.pt"
    metadata = {"architecture": "sam2", "config": "configs/sam2.1/sam2.1_hiera_t.yaml", "image_size": 256}
    save_checkpoint(
        small, {k: v.to(torch.float16) for k, v in state.items()}, metadata | {"version": "sam2-test"}
    )
    store = ModelStore(tmp_path / "models")
    store.promote(store.add(small, {}, "a SAM2 model").id, "served")
    result = retrain(
        RetrainSettings(
            tmp_path / "models", filled_store, max_steps=1, batch_size=2, tolerance=1.0, device="cpu"
        )
    )
    assert result.status == "promoted", result
    trained, promoted, _ = load_checkpoint(store.current().path)
    assert promoted["architecture"] == "sam2" and promoted["image_size"] == 256
    assert any(not torch.equal(state[k].half(), trained[k].half()) for k in state)  # it trained


@pytest.mark.parametrize(
    ("file", "what"), [("index.json", "dataset index"), ("sequences.json", "sequence index")]
)
def test_an_unreadable_store_index_is_named(tmp_path: Path, file: str, what: str) -> None:
    (tmp_path / file).write_text('{"cut": ')  # torn by a disk that filled up
    with pytest.raises(DatasetError, match=f"{file}: not a readable {what}"):
        DatasetStore(tmp_path)
