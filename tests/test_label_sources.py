"""The one rule for the latest annotation (polypseg/label_sources.py), as both platforms' pulls
apply it."""

from __future__ import annotations

from backends.labelstudio.regions import latest_annotation, task_regions
from polypseg.label_sources import annotation_version


def test_the_latest_annotation_is_the_one_edited_last_as_a_time() -> None:
    annotations = [
        # The same instant written two ways: compared as times, not as text.
        {"id": 7, "result": [], "updated_at": "2026-11-29T12:00:00+01:00"},
        {"id": 5, "result": [], "updated_at": "2026-11-29T11:30:00Z"},
        {"id": 9, "result": [], "updated_at": "2026-11-29T10:00:00.500000Z", "was_cancelled": True},
        {"id": 3, "result": [], "updated_at": ""},
    ]
    # 12:00+01:00 is 11:00Z: text order would pick id 7, time order picks id 5.
    assert latest_annotation({"annotations": annotations})["id"] == 5
    tie = [
        {"id": 4, "result": [], "updated_at": "2026-11-29T11:00:00Z"},
        {"id": 6, "result": [], "updated_at": "2026-11-29T12:00:00+01:00"},
    ]
    assert latest_annotation({"annotations": tie})["id"] == 6  # same instant: the one made later
    assert latest_annotation({"annotations": [annotations[2]]}) is None  # only a cancelled one
    assert latest_annotation({"annotations": [annotations[3]]})["id"] == 3  # no time: still counts
    assert latest_annotation({"annotations": [{"id": 8, "result": None}]}) is None  # nothing drawn


def test_prompt_regions_follow_the_same_rule() -> None:
    box = {"type": "rectanglelabels", "to_name": "image"}
    task = {
        "annotations": [
            # By time, id 1 (11:30Z) is later than id 2 (12:00+01:00 = 11:00Z): text would pick id 2.
            {"id": 1, "updated_at": "2026-11-29T11:30:00Z", "result": [dict(box, id="a")]},
            {"id": 2, "updated_at": "2026-11-29T12:00:00+01:00", "result": [dict(box, id="b")]},
            {"id": 3, "updated_at": "2026-11-29T12:00:00Z", "result": [{"type": "choices"}]},
        ],
        "predictions": [{"id": 4, "created_at": "2026-11-30T00:00:00Z", "result": [dict(box, id="p")]}],
    }

    def is_box(region: dict) -> bool:
        return region.get("type") == "rectanglelabels"

    # id 3 is the latest but draws no box, so the latest annotation with one, by time, is id 1.
    assert [r["id"] for r in task_regions(task, is_box)] == ["a"]
    assert [r["id"] for r in task_regions({"predictions": task["predictions"]}, is_box)] == ["p"]
    assert task_regions({"annotations": task["annotations"][2:]}, is_box) == []


def test_a_version_changes_with_the_label_or_the_image_only() -> None:
    version = annotation_version("regions-a", "crc32:0badf00d:1024")
    assert version == annotation_version("regions-a", "crc32:0badf00d:1024")
    assert version != annotation_version("regions-b", "crc32:0badf00d:1024")
    assert version != annotation_version("regions-a", "crc32:0badf00e:1024")
