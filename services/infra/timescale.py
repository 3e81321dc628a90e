"""Building TimescaleDB (Apache edition) from Debian's trixie source package.

No package index this machine reaches ships TimescaleDB for bookworm, so the extension
is compiled against the machine's PostgreSQL 15 once; later runs find it installed.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
from pathlib import Path

from services.core.errors import InfraError
from services.infra.system import Reporter, ensure_packages, run

PG_CONFIG = Path("/usr/lib/postgresql/15/bin/pg_config")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SOURCE_SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_PACKAGES = ("postgresql-server-dev-15", "cmake", "gcc", "make", "xz-utils", "libssl-dev")
BOOTSTRAP_FLAGS = (
    "-DAPACHE_ONLY=1",
    "-DREGRESS_CHECKS=OFF",
    "-DTAP_CHECKS=OFF",
    "-DWARNINGS_AS_ERRORS=OFF",
)


def pg_sharedir() -> Path:
    return Path(run([PG_CONFIG, "--sharedir"], what="pg_config --sharedir").strip())


def installed_version() -> str | None:
    """The default version of the installed timescaledb extension, or None."""
    control = pg_sharedir() / "extension" / "timescaledb.control"
    if not control.exists():
        return None
    match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text())
    return match.group(1) if match else "unknown"


def debian_mirror() -> str:
    """The Debian mirror URI this machine's own apt sources use for the main archive."""
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        candidates += sorted(sources_d.iterdir())
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for uri in re.findall(r"^URIs:\s*(\S+)", text, flags=re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri).rstrip("/")
        for uri in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, flags=re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri).rstrip("/")
    return DEFAULT_MIRROR


def fetch_source(work: Path, report: Reporter) -> Path:
    """Download the trixie source package with a private apt state; return the orig tarball."""
    existing = sorted(work.glob("timescaledb_*.orig.tar.*"))
    if existing:
        return existing[-1]
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    sources.write_text(
        f"deb-src [signed-by={DEBIAN_KEYRING}] {debian_mirror()} {SOURCE_SUITE} main\n"
    )
    options = [
        "-o",
        f"Dir::Etc::sourcelist={sources}",
        "-o",
        f"Dir::Etc::sourceparts={apt / 'parts'}",
        "-o",
        f"Dir::State::Lists={apt / 'lists'}",
        "-o",
        f"Dir::Cache={apt / 'cache'}",
        "-o",
        "APT::Get::List-Cleanup=0",
    ]
    report(f"downloading TimescaleDB source from Debian {SOURCE_SUITE}")
    run(["apt-get", *options, "update", "-q"], what="apt-get update (trixie sources)")
    run(
        ["apt-get", *options, "source", "--download-only", f"timescaledb/{SOURCE_SUITE}"],
        what="apt-get source timescaledb",
        cwd=work,
    )
    found = sorted(work.glob("timescaledb_*.orig.tar.*"))
    if not found:
        raise InfraError(f"apt-get source left no timescaledb_*.orig.tar.* in {work}")
    return found[-1]


def ensure_timescaledb(cache: Path, report: Reporter) -> str:
    """Build and install TimescaleDB unless it is installed already; return its version."""
    version = installed_version()
    if version:
        return version
    cache.mkdir(parents=True, exist_ok=True)
    tarball = fetch_source(cache, report)
    src = cache / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir()
    with tarfile.open(tarball) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(src, filter="data")
        else:
            # Debian's Python 3.11.2 predates extraction filters; apt verified the tarball
            # against the signed archive.
            archive.extractall(src)  # noqa: S202
    roots = [p for p in src.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise InfraError(f"unexpected layout in {tarball}: {[p.name for p in roots]}")
    root = roots[0]
    report(f"building TimescaleDB from {tarball.name} (about a minute on 2 cores)")
    run(
        ["./bootstrap", *BOOTSTRAP_FLAGS, f"-DPG_CONFIG={PG_CONFIG}"],
        what="TimescaleDB bootstrap",
        cwd=root,
    )
    run(["make", "-C", "build", "-j2", "install"], what="TimescaleDB build", cwd=root)
    version = installed_version()
    if not version:
        raise InfraError("TimescaleDB built but timescaledb.control is still not installed")
    shutil.rmtree(src, ignore_errors=True)  # the tarball stays cached; the tree is 100+ MB
    return version


if __name__ == "__main__":
    # The build stage of deploy/timescaledb/Dockerfile: the build `fieldtrack infra up` does,
    # with the source cached in the folder given.
    ensure_packages(BUILD_PACKAGES, print)
    print(f"TimescaleDB {ensure_timescaledb(Path(sys.argv[1]), print)} installed")
