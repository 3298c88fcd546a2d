"""The one rule for the latest annotation (polypseg/label_sources.py), as both platforms' pulls
apply it."""

from __future__ import annotations

from backends.labelstudio.export import latest_annotation
from polypseg.label_sources import annotation_version


def test_the_latest_annotation_is_the_one_edited_last_as_a_time() -> None:
    annotations = [
        # The same instant written two ways: compared as times, not as text.
        {"id": 7, "updated_at": "2026-11-29T12:00:00+01:00"},
        {"id": 5, "updated_at": "2026-11-29T11:30:00Z"},
        {"id": 9, "updated_at": "2026-11-29T10:00:00.500000Z", "was_cancelled": True},
        {"id": 3, "updated_at": ""},
    ]
    # 12:00+01:00 is 11:00Z: text order would pick id 7, time order picks id 5.
    assert latest_annotation({"annotations": annotations})["id"] == 5
    tie = [
        {"id": 4, "updated_at": "2026-11-29T11:00:00Z"},
        {"id": 6, "updated_at": "2026-11-29T12:00:00+01:00"},
    ]
    assert latest_annotation({"annotations": tie})["id"] == 6  # same instant: the one made later
    assert latest_annotation({"annotations": [annotations[2]]}) is None  # only a cancelled one
    assert latest_annotation({"annotations": [annotations[3]]})["id"] == 3  # no time: still counts


def test_a_version_changes_with_the_label_or_the_image_only() -> None:
    version = annotation_version("regions-a", "crc32:0badf00d:1024")
    assert version == annotation_version("regions-a", "crc32:0badf00d:1024")
    assert version != annotation_version("regions-b", "crc32:0badf00d:1024")
    assert version != annotation_version("regions-a", "crc32:0badf00e:1024")
