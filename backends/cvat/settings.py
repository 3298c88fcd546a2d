"""The CVAT functions' settings: the serving settings both platforms share (backends/serving.py)
plus the tracker's own, read and checked once, in `init_context`.

- POLYPSEG_TRACK_SHAPES: the shape kinds a tracker deployment follows (a comma list; default
  rectangle, polygon, mask).
- CVAT_REDIS_HOST, CVAT_REDIS_PORT, CVAT_REDIS_PASSWORD (as CVAT's own services take them):
  where tracker states live; without a host, in the function's process.
- POLYPSEG_TRACK_TTL: seconds a tracker state is kept (CVAT's own limit, 8 hours, by default).
- POLYPSEG_REACQUIRE: 1 (default) lets the classical tracker look for a lost polyp with the
  detector (POLYPSEG_DETECTOR, else the shipped one); 0 only where it was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from backends.cvat.protocol import SHAPE_KINDS
from backends.cvat.state_store import DEFAULT_TTL
from backends.serving import ServingSettings
from polypseg.environment import Environment, SettingsError


def tracked_shape_kinds(setting: str | None) -> tuple[str, ...]:
    """The shape kinds a tracker deployment follows, from a comma list (POLYPSEG_TRACK_SHAPES)."""
    if not setting:
        return SHAPE_KINDS
    kinds = tuple(k.strip() for k in setting.split(",") if k.strip())
    unknown = [k for k in kinds if k not in SHAPE_KINDS]
    if unknown or not kinds:
        raise SettingsError(f"POLYPSEG_TRACK_SHAPES={setting!r}: choose from {', '.join(SHAPE_KINDS)}")
    return kinds


@dataclass(frozen=True)
class CvatSettings(ServingSettings):
    track_shapes: tuple[str, ...] = SHAPE_KINDS
    track_ttl: int = DEFAULT_TTL
    redis_host: str = ""
    redis_port: int = 6379
    redis_password: str = ""
    reacquire: bool = True

    @classmethod
    def from_env(  # type: ignore[override]
        cls, environ: Mapping[str, str] | None = None, tracker: str = "classical"
    ) -> CvatSettings:
        """CVAT's tracker follows boxes classically unless POLYPSEG_TRACKER says otherwise."""
        env = Environment(environ)
        return super().from_env(
            environ,
            tracker,
            track_shapes=tracked_shape_kinds(env.text("POLYPSEG_TRACK_SHAPES")),
            track_ttl=env.integer("POLYPSEG_TRACK_TTL", DEFAULT_TTL, minimum=1),
            redis_host=env.text("CVAT_REDIS_HOST"),
            redis_port=env.integer("CVAT_REDIS_PORT", 6379, minimum=1),
            redis_password=env.text("CVAT_REDIS_PASSWORD"),
            reacquire=env.choice("POLYPSEG_REACQUIRE", ("1", "0"), "1") == "1",
        )
