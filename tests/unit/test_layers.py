"""The layers of docs/architecture.md hold: lint-imports (run by `make lint`) passes on the
tree, and fails once a copy of it gains an import that points up or sideways."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "device_sim", "bench")
# The console script `lint-imports`, run with this interpreter whatever its bin folder is.
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.argv[0] = 'lint-imports'; lint_imports_command()",
    "--no-cache",  # nothing is written into the tree
]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts, importing the packages found under root."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        LINT_IMPORTS, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_layers() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "report"),
    [
        # core knows no other part
        ("services/core/errors.py", "import services.api", "services.core.errors -> services.api"),
        # the simulator knows the broker and the schemas, not ingest
        (
            "device_sim/runner.py",
            "import services.ingest.history",
            "device_sim.runner -> services.ingest.history",
        ),
        # ingest and analytics do not know each other
        (
            "services/ingest/store.py",
            "import services.analytics.report",
            "services.ingest.store -> services.analytics.report",
        ),
        # accounts stand beside the registry and borrow nothing from it
        (
            "services/accounts/store.py",
            "import services.registry.repository",
            "services.accounts.store -> services.registry.repository",
        ),
        # the web stack stays in the API
        ("services/analytics/usage.py", "import fastapi", "services.analytics.usage -> fastapi"),
    ],
)
def test_a_backwards_import_fails(tmp_path: Path, module: str, line: str, report: str) -> None:
    tree = _copy(tmp_path)
    target = tree / module
    target.write_text(f"{target.read_text()}\n{line}  # noqa: F401, E402\n")
    result = _lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and report in result.stdout, result.stdout


def test_the_formatter_formats_the_tree() -> None:
    """`ruff format` lays out the code (`make lint` checks it): nothing is hand-laid against it."""
    markers = ("# fmt" + ": skip", "# fmt" + ": off")  # split, or this file would match
    hand_laid = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in (*PACKAGES, "tests")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if any(marker in line for marker in markers)
    ]
    assert hand_laid == []
