"""docker-compose.yml: what it runs, checked on the YAML and by docker compose itself (docker
compose v2, or Debian's docker-compose, which `make system-packages` installs)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


def compose_client() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_file_runs_label_studio_backend_trainer_and_setup() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"  # pinned
    backend, trainer, setup = services["polypseg"], services["trainer"], services["setup"]
    assert (ROOT / backend["build"]["dockerfile"]).is_file()
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["environment"]["MODEL_DIR"] == "/data/models"
    assert "retrain --every" in trainer["command"] and trainer["image"] == backend["image"]
    assert {v.split(":")[0] for v in trainer["volumes"]} == {v.split(":")[0] for v in backend["volumes"]}
    assert "backends.labelstudio.connect" in setup["command"] and setup["restart"] == "no"
    for name in ("polypseg-gpu", "trainer-gpu"):
        gpu = services[name]
        assert gpu["profiles"] == ["gpu"] and gpu["environment"]["DEVICE"] == "cuda", name
        assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia", name
        assert gpu["image"].endswith("-gpu") and gpu["environment"]["MODEL_DIR"] == "/data/models", name
    assert services["trainer-gpu"]["command"] == trainer["command"]
    assert "POLYPSEG_BACKEND_URL" in setup["command"] and "BASIC_AUTH_USER" in setup["environment"]
    assert set(compose["volumes"]) == {"postgres-data", "label-studio-data", "models", "dataset"}
    # Label Studio sends nothing off the machine (its settings in 1.23.2's core/settings).
    studio = services["label-studio"]["environment"]
    assert studio["SENTRY_DSN"] == studio["FRONTEND_SENTRY_DSN"] == ""
    assert studio["LATEST_VERSION_CHECK"] == studio["COLLECT_ANALYTICS"] == "false"
    assert not services["label-studio"].get("command")  # the login comes by environment, not argv


LABEL_STUDIO_SETTINGS = ROOT / ".venv-labelstudio" / "lib" / "python3.11" / "site-packages" / "label_studio"


def test_label_studio_runs_on_postgresql_once_it_is_healthy() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    db, studio = services["db"], services["label-studio"]
    assert re.fullmatch(r"postgres:\d+\.\d+", db["image"])  # the official image, pinned
    assert "postgres-data:/var/lib/postgresql/data" in db["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert studio["depends_on"]["db"]["condition"] == "service_healthy"
    env = studio["environment"]
    assert env["DJANGO_DB"] == "postgresql" and env["POSTGRE_HOST"] == "db"
    # The same database, user and password on both sides.
    for label_studio_name, postgres_name in (("NAME", "DB"), ("USER", "USER"), ("PASSWORD", "PASSWORD")):
        variable = re.compile(r"\$\{(\w+)")
        label_studio_side = variable.match(env[f"POSTGRE_{label_studio_name}"])
        postgres_side = variable.match(db["environment"][f"POSTGRES_{postgres_name}"])
        assert label_studio_side and postgres_side, label_studio_name
        assert label_studio_side[1] == postgres_side[1] == f"POSTGRES_{postgres_name}"


def test_database_settings_are_the_ones_label_studio_reads() -> None:
    """Replays Label Studio 1.23.2's own settings (core/settings/base.py and label_studio.py in
    the installed package): DJANGO_DB picks an entry of DATABASES_ALL, and every POSTGRE_* name
    the compose file sets is one that its PostgreSQL entry reads."""
    settings = LABEL_STUDIO_SETTINGS / "core" / "settings"
    assert settings.is_dir(), "Label Studio is not installed: make install-labelstudio"
    base, local = (settings / "base.py").read_text(), (settings / "label_studio.py").read_text()
    assert "DATABASES = {'default': DATABASES_ALL[DJANGO_DB]}" in local
    assert "DJANGO_DB_POSTGRESQL = 'postgresql'" in base
    postgres = base[base.index("DJANGO_DB_POSTGRESQL: {") : base.index("DJANGO_DB_MYSQL: {")]
    read = set(re.findall(r"get_env\('(POSTGRE_\w+)'", postgres))
    env = yaml.safe_load(COMPOSE.read_text())["services"]["label-studio"]["environment"]
    assert {name for name in env if name.startswith("POSTGRE_")} == read == {
        "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT"
    }  # fmt: skip


def test_env_example_sets_every_required_variable() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert required and required <= set(example)


def test_docker_compose_config_passes(tmp_path: Path) -> None:
    client = compose_client()
    assert client, "no docker compose client: `make system-packages` installs docker-compose"
    for profile in ([], ["--profile", "gpu"]):
        run = subprocess.run(
            [*client, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *profile, "config"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "polypseg" in run.stdout
        # The volumes README's backup commands name, whatever this checkout's folder is called.
        named = {v["name"] for v in yaml.safe_load(run.stdout)["volumes"].values()}
        assert named == {
            "polypseg_models",
            "polypseg_dataset",
            "polypseg_label-studio-data",
            "polypseg_postgres-data",
        }
        assert "-v polypseg_models:/m" in (ROOT / "README.md").read_text()
    # Refuses to start without either password, and says which.
    passwords = ("LABEL_STUDIO_PASSWORD", "POSTGRES_PASSWORD")
    for given, wanted in (passwords, passwords[::-1]):
        missing = subprocess.run(
            [*client, "-f", str(COMPOSE), "config"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", given: "x", "LABEL_STUDIO_API_KEY": "0" * 40},
        )
        assert missing.returncode != 0 and wanted in missing.stderr, missing.stderr


def test_a_project_title_with_spaces_reaches_setup_as_one_argument() -> None:
    client = compose_client()
    assert client, "no docker compose client: `make system-packages` installs docker-compose"
    run = subprocess.run(
        [*client, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LABEL_STUDIO_PROJECT_TITLE": "Colon polyps, 2026"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    command = yaml.safe_load(run.stdout)["services"]["setup"]["command"]
    # Compose v2 prints the command as its argument list; v1 as the string it splits like a shell.
    argv = command if isinstance(command, list) else shlex.split(command)
    assert argv[argv.index("--title") + 1] == "Colon polyps, 2026"
