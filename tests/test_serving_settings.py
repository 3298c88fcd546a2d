"""The one serving settings object (backends/serving.py) that both platforms read at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backends.cvat.settings import CvatSettings
from backends.labelstudio.settings import Settings
from backends.serving import ServingSettings
from conftest import ROOT
from polypseg.environment import SettingsError


def test_both_platforms_read_the_same_variables_their_own_way() -> None:
    environ = {
        "MODEL_DIR": "/models",
        "POLYPSEG_CHECKPOINT": "/m/sam2.pt",
        "DEVICE": "cpu",
        "POLYPSEG_SAM2_SIZE": "512",
        "POLYPSEG_CACHE_BYTES": "1000",
        "LABEL_STUDIO_URL": "http://ls:8080/",
        "POLYPSEG_TRACK_SHAPES": "rectangle, polygon",
        "CVAT_REDIS_HOST": "redis",
    }
    ls, cvat = Settings.from_env(environ), CvatSettings.from_env(environ)
    for settings in (ls, cvat):
        assert (settings.model_dir, settings.checkpoint, settings.device) == (
            Path("/models"),
            Path("/m/sam2.pt"),
            "cpu",
        )
        assert settings.predictor_options() == {"cache_bytes": 1000, "image_size": 512}
    assert ls.label_studio_url == "http://ls:8080" and ls.tracker == "auto"
    assert cvat.track_shapes == ("rectangle", "polygon") and cvat.redis_host == "redis"
    assert cvat.tracker == "classical"  # CVAT's tracker follows boxes classically unless told


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("POLYPSEG_TRACKER", "kalman", "one of auto, classical, sam2"),
        ("POLYPSEG_SAM2_SIZE", "big", "is not a whole number"),
        ("POLYPSEG_CACHE_BYTES", "-5", "at least 0"),
        ("POLYPSEG_MAX_IMAGE_PIXELS", "0", "at least 1"),
        ("POLYPSEG_THREADS", "four", "is not a whole number"),
        ("POLYPSEG_TRACK_SHAPES", "ellipse", "choose from rectangle, polygon, mask"),
    ],
)
def test_a_bad_value_is_refused_at_start_with_its_name(variable: str, value: str, reason: str) -> None:
    settings_class = CvatSettings if variable == "POLYPSEG_TRACK_SHAPES" else Settings
    with pytest.raises(SettingsError, match=f"{variable}=.*{reason}"):
        settings_class.from_env({variable: value})


def test_nothing_is_read_from_the_environment_at_import() -> None:
    """Bad values do not break imports (they did when limits were read at import time); the
    server's start refuses them."""
    script = (
        "import polypseg.images, polypseg.predictors.base, backends.labelstudio.server, "
        "backends.cvat.handlers\n"
        "from backends.serving import ServingSettings\n"
        "try:\n    ServingSettings.from_env()\nexcept Exception as exc:\n    print(exc)\n"
    )
    bad = {"POLYPSEG_MAX_IMAGE_PIXELS": "lots", "POLYPSEG_CACHE_BYTES": "1e9", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**bad, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "POLYPSEG_MAX_IMAGE_PIXELS='lots' is not a whole number" in result.stdout


def test_tracker_auto_is_sam2_only_for_sam2_on_a_gpu() -> None:
    class Model:
        def __init__(self, name: str, device: str) -> None:
            self.name, self.device = name, device

    auto = ServingSettings()
    assert auto.tracker_for(Model("sam2", "cuda:0")) == "sam2"  # type: ignore[arg-type]
    assert auto.tracker_for(Model("sam2", "cpu")) == "classical"  # type: ignore[arg-type]
    assert auto.tracker_for(Model("unet", "cuda")) == "classical"  # type: ignore[arg-type]
    assert ServingSettings(tracker="sam2").tracker_for(Model("unet", "cpu")) == "sam2"  # type: ignore[arg-type]
