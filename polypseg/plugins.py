"""How annotation platforms plug into the core without the core importing them.

A platform package declares an entry point in the group `polypseg.plugins` (pyproject.toml's
`[project.entry-points."polypseg.plugins"]`) naming a function that takes the `Plugins`
registry and adds what it offers: kinds of label source that `polypseg retrain` pulls from
(with their flags), servers that `polypseg serve <name>` starts, commands of their own
(`polypseg video-tasks`), and image sources that `polypseg rank NAME:WHICH` reads. The core reads only this
registry; a core installed without the platforms simply offers neither.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import numpy as np

from polypseg.label_sources import LabelSource

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "polypseg.plugins"


@dataclass(frozen=True)
class SourceKind:
    """A kind of label source: its flags on `polypseg retrain`, and the sources they name
    (built, and their settings checked, once before the first round; none if not asked for)."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    sources: Callable[[argparse.Namespace], list[LabelSource]]


@dataclass(frozen=True)
class Server:
    """`polypseg serve <name>`: the core adds the model flags (--model, --checkpoint, --device),
    the platform its own, and `run` serves until stopped."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


@dataclass(frozen=True)
class Command:
    """`polypseg <name>`: a platform's own command, with its flags."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


# One image of an image source: its name for the ranking, and a reader of its pixels (raises
# PolypsegError where it cannot be read).
NamedImage = tuple[str, Callable[[], np.ndarray]]


@dataclass(frozen=True)
class ImageSource:
    """Unlabelled images kept on a platform, named on the command line as `NAME:WHICH`
    (`labelstudio:3`: project 3's tasks without an annotation), with the flags that reach it."""

    name: str
    help: str  # what WHICH names
    add_arguments: Callable[[argparse.ArgumentParser], None]
    images: Callable[[str, argparse.Namespace], Iterable[NamedImage]]


@dataclass
class Plugins:
    source_kinds: dict[str, SourceKind] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    image_sources: dict[str, ImageSource] = field(default_factory=dict)

    def add_image_source(self, source: ImageSource) -> None:
        self.image_sources[source.name] = source

    def add_command(self, command: Command) -> None:
        self.commands[command.name] = command

    def add_source_kind(self, kind: SourceKind) -> None:
        self.source_kinds[kind.name] = kind

    def add_server(self, server: Server) -> None:
        self.servers[server.name] = server

    def merge(self, other: Plugins) -> None:
        self.source_kinds.update(other.source_kinds)
        self.servers.update(other.servers)
        self.commands.update(other.commands)
        self.image_sources.update(other.image_sources)


@functools.cache
def load_plugins() -> Plugins:
    """Every installed platform's registrations, in the entry points' name order."""
    plugins = Plugins()
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        # A platform installed without its client libraries, or a broken third-party plugin,
        # must not take down every command (`polypseg segment` needs no platform at all).
        # Each registers into its own registry first, so one that fails half-way adds nothing.
        staged = Plugins()
        try:
            entry.load()(staged)
        except Exception as exc:
            log.warning("polypseg plugin %s not loaded: %s: %s", entry.name, type(exc).__name__, exc)
            continue
        plugins.merge(staged)
    return plugins
