"""The model store's served model: how `CurrentModel` behaves while a promoted version loads or
cannot be loaded, and the permissions a version is stored with."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from polypseg.errors import ModelError
from polypseg.model_store import CurrentModel, ModelStore
from polypseg.predictors import default_checkpoint


def test_a_version_folder_is_readable_by_a_server_run_as_another_user(tmp_path: Path) -> None:
    version = ModelStore(tmp_path).add(default_checkpoint(), {}, "shipped")
    folder_mode = stat.S_IMODE(version.path.parent.stat().st_mode)
    assert folder_mode & 0o055 == 0o055, oct(folder_mode)  # group and others may list and enter it
    assert stat.S_IMODE(version.path.stat().st_mode) & 0o044 == 0o044


def test_requests_are_not_held_up_while_a_new_version_loads(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    old, new = store.add(default_checkpoint(), {}, "old"), store.add(default_checkpoint(), {}, "new")
    store.promote(old.id, "start")
    loading, release = threading.Event(), threading.Event()

    def load(path: Path | None) -> str:
        if path == new.path:
            loading.set()
            release.wait(30)  # a large model loading slowly
        return f"predictor of {path.parent.name if path else None}"

    current = CurrentModel(store, load, interval=0.0)  # type: ignore[arg-type]
    store.promote(new.id, "retrained")
    first = threading.Thread(target=current.get)
    first.start()
    assert loading.wait(30)
    answered: list[str] = []
    second = threading.Thread(target=lambda: answered.append(current.get()))  # type: ignore[arg-type]
    second.start()
    second.join(10)
    try:
        assert not second.is_alive() and answered == [f"predictor of {old.id}"]
    finally:
        release.set()
        first.join(30)
    assert current.get() == f"predictor of {new.id}"


def test_a_version_this_server_cannot_run_is_not_served_and_not_retried(tmp_path: Path) -> None:
    """Any polypseg error while loading (a ModelError, say, for a working size this family does
    not take), at start or after a promotion: the working model stays, and the failed version is
    not loaded again on every request."""
    store = ModelStore(tmp_path)
    good, bad = store.add(default_checkpoint(), {}, "good"), store.add(default_checkpoint(), {}, "bad")
    tries: list[Path | None] = []

    def load(path: Path | None) -> str:
        tries.append(path)
        if path == bad.path:
            raise ModelError("a working size of 512 is for SAM2")
        return f"predictor of {path.parent.name if path else 'the fallback'}"

    store.promote(bad.id, "start")
    at_start = CurrentModel(store, load, fallback=None, interval=0.0)  # type: ignore[arg-type]
    assert at_start.get() == "predictor of the fallback"

    store.promote(good.id, "good")
    current = CurrentModel(store, load, interval=0.0)  # type: ignore[arg-type]
    store.promote(bad.id, "bad")
    tries.clear()
    assert [current.get() for _ in range(3)] == [f"predictor of {good.id}"] * 3
    assert tries == [bad.path]
