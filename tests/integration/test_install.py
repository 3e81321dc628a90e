"""fieldtrack installed like any package: `pip install` of the project (not editable) into a
fresh venv, then `fieldtrack api` and `fieldtrack sim` run from a folder outside the checkout.
The pages render from the package data in site-packages, the state goes to ./.state of the
working directory, and neither the install nor the checkout is written to."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.core.settings import Settings
from tests import PROJECT_ROOT, source_changes
from tests.integration.conftest import mint_token

# Building the wheel and installing it with its dependencies: about a minute on a busy
# two-CPU machine, pip's cache (or /opt/wheels) supplying the downloads.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

API_START_S = 60.0


@dataclass(frozen=True)
class Install:
    venv: Path
    site_packages: Path

    @property
    def fieldtrack(self) -> Path:
        return self.venv / "bin" / "fieldtrack"


def _run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """The caller's environment without what would point the install at the checkout: no
    PYTHONPATH, no virtualenv, no state folder (the default, ./.state, is under test)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        and not key.startswith("FIELDTRACK_")
    }


def _tree(root: Path) -> dict[str, int]:
    """Every file under *root* with its modification time."""
    return {
        str(path.relative_to(root)): path.stat().st_mtime_ns
        for path in root.rglob("*")
        if path.is_file()
    }


def _copy_source(target: Path) -> None:
    """The checkout's files as git lists them (tracked and new, not ignored): the build
    writes its build/ and *.egg-info into the copy, never into the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    root = tmp_path_factory.mktemp("install")
    source, venv = root / "source", root / "venv"
    _copy_source(source)
    env = _clean_env()
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", venv], cwd=root, env=env)
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", source], cwd=root, env=env)
    print(f"[install] venv and `pip install` took {time.monotonic() - started:.0f} s")
    found = _run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=root,
        env=env,
    )
    yield Install(venv, Path(found.strip()))
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_installed_package_is_not_the_checkout(installed: Install, tmp_path: Path) -> None:
    where = _run(
        [
            installed.venv / "bin" / "python",
            "-c",
            "import dashboards, device_sim, services; "
            "print(services.__file__, device_sim.__file__, dashboards.__file__)",
        ],
        cwd=tmp_path,
        env=_clean_env(),
    )
    for module in where.split():
        assert Path(module).is_relative_to(installed.site_packages), where


def test_installed_api_serves_the_pages_from_another_folder(
    installed: Install, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    port = _free_port()
    env = _clean_env() | {
        "FIELDTRACK_DATABASE_URL": settings.database_url.get_secret_value(),
        "FIELDTRACK_MQTT_ADMIN_PASSWORD": settings.mqtt_admin_password.get_secret_value(),
        "FIELDTRACK_MQTT_INGEST_PASSWORD": settings.mqtt_ingest_password.get_secret_value(),
        "FIELDTRACK_SESSION_SECRET": "installed-api-test-" + "s" * 32,
    }
    site_before, source_before = _tree(installed.site_packages), source_changes()
    token = mint_token(settings.database_url.get_secret_value(), name="install-test")
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [installed.fieldtrack, "api", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as api:
        try:
            deadline = time.monotonic() + API_START_S
            while True:
                assert api.poll() is None, api.stdout.read().decode() if api.stdout else ""
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the installed API did not start"
                time.sleep(0.2)
            login = httpx.get(f"{base}/login", timeout=10)
            assert login.status_code == 200, login.text
            assert "<h1>Log in</h1>" in login.text and '/static/style.css"' in login.text
            style = httpx.get(f"{base}/static/style.css", timeout=10)
            assert style.status_code == 200
            assert style.text == (PROJECT_ROOT / "dashboards" / "static" / "style.css").read_text()
            chart = httpx.get(f"{base}/vendor/plotly/plotly.min.js", timeout=10)
            assert chart.status_code == 200
            headers = {"Authorization": f"Bearer {token}"}
            for page in ("customers", "portfolio", "fleet", "ingest"):
                shown = httpx.get(f"{base}/dashboards/{page}", headers=headers, timeout=30)
                assert shown.status_code == 200, f"{page}: {shown.text}"
                assert shown.headers["content-type"].startswith("text/html"), page
        finally:
            api.terminate()
            api.wait(timeout=15)
    assert _tree(installed.site_packages) == site_before, "the API wrote into site-packages"
    assert source_changes() == source_before, "the API wrote into the checkout"


def test_installed_sim_loads_the_shipped_scenario(installed: Install, tmp_path: Path) -> None:
    site_before, source_before = _tree(installed.site_packages), source_changes()
    out = tmp_path / "history.ndjson"
    export = ["sim", "export", "--scenario", "demo", "--days", "0.01", "--out", str(out)]
    _run(
        [installed.fieldtrack, *export],
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert out.stat().st_size > 0
    # The ground truth goes to the state folder of the working directory.
    assert (tmp_path / ".state" / "sim" / "demo.truth.json").is_file()
    assert _tree(installed.site_packages) == site_before, "the simulator wrote into site-packages"
    assert source_changes() == source_before, "the simulator wrote into the checkout"
