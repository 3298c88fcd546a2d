"""The core stands on its own: every module of `polypseg` imports with the platform packages
(`backends`, `serverless`) made unimportable, and the platforms reach the core only through
the registry it defines (polypseg/plugins.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

from conftest import ROOT

PLATFORMS = ("backends", "serverless")
# The platforms' own libraries and the transports: DESIGN.md keeps them out of the core too.
PLATFORM_LIBRARIES = ("label_studio_sdk", "cvat_sdk", "nuclio_sdk", "redis", "requests", "fastapi", "uvicorn")

# Run in a fresh interpreter: a finder placed first on sys.meta_path refuses the platforms,
# whatever else is installed, and every module under polypseg/ is imported in turn.
IMPORT_EVERY_CORE_MODULE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {platforms!r}:
                raise ImportError(f"the core imported platform code: {{name}}")
            return None

    sys.meta_path.insert(0, Refuse())
    import polypseg
    names = ["polypseg"] + [m.name for m in pkgutil.walk_packages(polypseg.__path__, "polypseg.")]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failed.append(f"{{name}}: {{exc}}")
    from polypseg.cli import build_parser
    build_parser()  # with no platform plugged in, the commands still build
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in {platforms!r})
    print(len(names))
    print("\\n".join(failed + leaked))
    """
).format(platforms=PLATFORMS)


def test_every_core_module_imports_without_the_platforms() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_CORE_MODULE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    count, *problems = result.stdout.strip().split("\n")
    assert int(count) > 40  # the walk really reached the subpackages
    assert problems == [], problems


def test_no_core_function_imports_the_platforms_either() -> None:
    """Imports inside functions run only when called: read them from the source instead (the
    platforms' libraries and transports included)."""
    found = []
    for path in sorted((ROOT / "polypseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in PLATFORMS + PLATFORM_LIBRARIES
            ]
    assert found == []


def test_the_platforms_plug_into_retrain_and_serve() -> None:
    from polypseg.cli import build_parser
    from polypseg.plugins import load_plugins

    plugins = load_plugins()
    assert set(plugins.source_kinds) == {"labelstudio", "cvat"} and set(plugins.servers) == {"labelstudio"}
    args = build_parser().parse_args(
        ["retrain", "--model-dir", "m", "--dataset", "d", "--label-studio-url", "http://ls:8080"]
        + ["--label-studio-project", "3", "--cvat-archive", "a.zip", "--cvat-archive", "b.zip"]
    )
    sources = [s for kind in plugins.source_kinds.values() for s in kind.sources(args)]
    assert sorted(s.name for s in sources) == [
        "CVAT archive a.zip",
        "CVAT archive b.zip",
        "Label Studio project 3 at http://ls:8080",
    ]
    serve = build_parser().parse_args(["serve", "labelstudio", "--port", "9191", "--device", "cpu"])
    assert (serve.port, serve.device, serve.run) == (9191, "cpu", plugins.servers["labelstudio"].run)


def test_a_broken_plugin_is_skipped_with_a_warning_and_adds_nothing(tmp_path, monkeypatch, caplog) -> None:
    """One platform package that fails to register (a missing function, an error half-way)
    must not take down every command: the others still load."""
    from importlib.metadata import EntryPoint

    from polypseg import plugins as registry

    (tmp_path / "broken_plugin.py").write_text(
        "def half_way(plugins):\n"
        "    plugins.add_command(object.__new__(type('C', (), {'name': 'half'})))\n"
        "    raise RuntimeError('no licence server')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    real = list(registry.entry_points(group=registry.ENTRY_POINT_GROUP))
    broken = [
        EntryPoint("aaa-missing", "broken_plugin:register", registry.ENTRY_POINT_GROUP),
        EntryPoint("aab-half-way", "broken_plugin:half_way", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [*broken, *real])
    with caplog.at_level("WARNING", logger="polypseg.plugins"):
        loaded = registry.load_plugins.__wrapped__()
    assert set(loaded.source_kinds) == {"labelstudio", "cvat"} and "half" not in loaded.commands
    assert "aaa-missing not loaded: AttributeError" in caplog.text
    assert "aab-half-way not loaded: RuntimeError: no licence server" in caplog.text
