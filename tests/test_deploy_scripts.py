"""serverless/deploy*.sh as an admin runs them: what is missing is said first, before anything
is built; the polypseg wheel is built outside the checkout and every function gets it. There is
no nuclio here: a stand-in `nuctl` records what it is asked to deploy and what the function
folder holds at that moment (docker is only looked for, never run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SERVERLESS = ROOT / "serverless"
FUNCTIONS = sorted(p.parent.name for p in SERVERLESS.glob("*/function.yaml"))


def _untracked() -> set[str]:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    return {line[3:] for line in status.splitlines() if line.startswith(("??", "!!"))}


def _stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize("script", ["deploy_cpu.sh", "deploy_gpu.sh"])
def test_missing_tools_are_named_before_anything_is_built(tmp_path: Path, script: str) -> None:
    before = _untracked()
    bare = tmp_path / "bin"  # no nuctl, no docker
    bare.mkdir()
    for tool in ("bash", "dirname", "python3"):
        found = next(Path(p) / tool for p in ("/usr/bin", "/bin") if (Path(p) / tool).exists())
        os.symlink(found, bare / tool)
    run = subprocess.run(
        ["bash", str(SERVERLESS / script)], capture_output=True, text=True, timeout=120,
        env={"PATH": str(bare), "PYTHON": sys.executable},
    )  # fmt: skip
    assert run.returncode == 1
    assert "nothing was built or deployed; first install:" in run.stderr
    assert "nuctl, nuclio's CLI" in run.stderr and "docker (nuctl" in run.stderr
    assert "setuptools" not in run.stderr  # this Python has what the build needs
    old_python = tmp_path / "old"
    old_python.mkdir()
    _stand_in(old_python, "python", "exit 1\n")  # a Python without setuptools or wheel
    run = subprocess.run(
        ["bash", str(SERVERLESS / script)], capture_output=True, text=True, timeout=120,
        env={"PATH": str(bare), "PYTHON": str(old_python / "python")},
    )  # fmt: skip
    assert run.returncode == 1 and "pip install --upgrade pip 'setuptools>=69' wheel" in run.stderr
    assert _untracked() == before


@pytest.mark.slow
def test_deploy_builds_outside_the_checkout_and_gives_each_function_the_wheel(tmp_path: Path) -> None:
    before = _untracked()
    tools = tmp_path / "bin"
    tools.mkdir()
    calls = tmp_path / "calls.txt"
    # nuctl: record the call and, for a deploy, the wheels in the function's folder at that time.
    _stand_in(
        tools,
        "nuctl",
        f'echo "$*" >> {calls}\n'
        'case "$1" in deploy) while [ $# -gt 0 ]; do [ "$1" = --path ] && ls "$2/wheels" >> '
        f"{calls}; shift; done;; esac\n",
    )
    _stand_in(tools, "docker", "exit 0\n")
    run = subprocess.run(
        ["bash", str(SERVERLESS / "deploy_cpu.sh")], capture_output=True, text=True, timeout=600,
        env={"PATH": f"{tools}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = calls.read_text().splitlines()
    deploys = [i for i, line in enumerate(lines) if line.startswith("deploy ")]
    assert len(deploys) == len(FUNCTIONS) >= 3
    for i, name in zip(deploys, FUNCTIONS, strict=True):
        assert f"--path {SERVERLESS / name} --file {SERVERLESS / name / 'function.yaml'}" in lines[i]
        # The wheel, and the constraints its install in function.yaml pins what it pulls in by.
        assert lines[i + 1] == "constraints.txt", lines[i + 1 : i + 3]
        assert lines[i + 2].startswith("polypseg-0.1.0-") and lines[i + 2].endswith(".whl")
    for config in SERVERLESS.glob("*/function*.yaml"):
        assert "pip install -c /opt/nuclio/wheels/constraints.txt " in config.read_text(), config
    assert _untracked() == before  # no build/, no *.egg-info, no wheels/ left behind
