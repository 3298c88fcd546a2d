"""Where retraining's labels come from: one interface that every annotation platform implements
(a Label Studio project, a CVAT export or task), and the one rule for "the latest annotation".

The rule, for every source:
- **Which annotation**: of an item's annotations that count (not cancelled, drawing a polyp),
  the one edited last; update times are compared as times, and ties go to the larger id (the
  one made later). A CVAT export already holds one annotation per frame, so the rule picks it.
- **Whether the store holds it**: an entry is current when its version, a digest of what the
  annotation draws and of the image it is drawn on (`annotation_version`), is the one the store
  holds. Update times are recorded, never compared: a save that changes nothing (Label Studio)
  or an edit elsewhere in the same task (CVAT's task-wide update time) moves them without
  changing the label.

Platforms register their sources through `polypseg.plugins`; the core never imports them.
"""

from __future__ import annotations

import datetime
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from polypseg.data_store import DatasetStore
from polypseg.errors import PolypsegError

A = TypeVar("A")


class PullError(PolypsegError):
    """A source that could not be read at all (unreachable, refused); the store is untouched."""


@dataclass
class PullReport:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0  # no longer labelled at the source
    skipped: int = 0  # a label that cannot be drawn or an image missing: the earlier version kept
    sequences: int = 0  # video sequences written or rewritten
    failed: dict[str, str] = field(default_factory=dict)  # item -> why the store refused it


class LabelSource(ABC):
    """A place labelled polyps are pulled from into the dataset store."""

    @property
    @abstractmethod
    def name(self) -> str:
        """What the source is, for logs ("Label Studio project 3 at host:8080")."""

    @abstractmethod
    def pull(self, store: DatasetStore) -> PullReport:
        """Bring the store up to date with the source: new and changed labels in, labels gone
        from the source out, items that fail counted and skipped. Raises PullError (or another
        PolypsegError) when the source cannot be read at all."""


def _when(text: str) -> tuple[int, datetime.datetime | None]:
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return (0, None)  # unreadable or missing: older than any readable time
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (1, moment)


def latest_annotation(
    annotations: Iterable[A], updated_at: Callable[[A], str], ident: Callable[[A], int]
) -> A | None:
    """The annotation edited last (ties: the larger id), or None for none (see module doc)."""
    return max(annotations, key=lambda a: (_when(updated_at(a)), ident(a)), default=None)


def annotation_version(label: str, image: str) -> str:
    """The version a store entry is compared by: what the label draws (any text that changes
    whenever its shapes do) and which image it is drawn on (a checksum, or a URL)."""
    return hashlib.sha1(f"{label}\n{image}".encode()).hexdigest()[:20]
