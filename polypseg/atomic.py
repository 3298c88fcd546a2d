"""Writing files so that a reader never sees half of one: the content goes to a temporary file
in the same folder, which replaces the target only once it is whole."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary handle whose content becomes `path` (with permissions `mode`) when the block
    ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private (0o600): most files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with atomic_output(path, mode) as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], body: object) -> None:
    """`body` as indented JSON, written atomically."""
    write_atomic(path, json.dumps(body, indent=1).encode())
