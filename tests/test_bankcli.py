"""``fedi-filter hash`` and ``fedi-filter bank``, run as real subprocesses against a real SQLite store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from proxy.bankcli import file_hashes
from tests.support.configs import FACES, config_dict
from tests.support.photos import photo

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["bank", "--config", str(config), *args[1:]] if config is not None else list(args)
    return subprocess.run([sys.executable, "-m", "proxy", *extra], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=dict(os.environ))


def test_cli_hash_and_banks(tmp_path: Path) -> None:
    raw = config_dict(FACES, server={"audit_db": str(tmp_path / "audit.sqlite3")})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    image = tmp_path / "astronaut.jpg"
    image.write_bytes(photo("astronaut"))
    sha256, md5, frames = file_hashes(photo("astronaut"))

    r = cli("hash", str(image))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"sha256:{sha256}  {image}", f"md5:{md5}  {image}",
                                     f"pdq:{frames[0].value}  {image}  quality={frames[0].quality}"]

    r = cli("bank", "add", "shared", str(image), "--label", "portrait", config=config)
    assert r.returncode == 0 and "3 added" in r.stdout, r.stderr
    r = cli("bank", "list", config=config)
    assert r.returncode == 0 and r.stdout.splitlines() == ["allow\tallow\t0 entries", "deny\tdeny\t0 entries",
                                                           "own\tknown\t0 entries", "shared\tknown\t3 entries"]
    out = tmp_path / "export"
    r = cli("bank", "export", "shared", "--out", str(out), config=config)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["shared.hash_md5.te", "shared.hash_pdq.te", "shared.hash_sha256.te"]
    (out / "shared.hash_pdq.te").rename(out / "copy.hash_pdq.te")
    r = cli("bank", "import", str(out / "copy.hash_pdq.te"), "--role", "deny", config=config)
    assert r.returncode == 0 and "copy: 1 of 1 imported" in r.stdout, r.stderr
    r = cli("bank", "export", "copy", "--kind", "pdq", config=config)
    assert r.stdout == (out / "copy.hash_pdq.te").read_text()
    r = cli("bank", "remove", "shared", f"sha256:{sha256}", config=config)
    assert r.returncode == 0 and "1 removed" in r.stdout
    r = cli("bank", "remove", "own", config=config)
    assert r.returncode == 2 and "cannot be removed" in r.stderr
    with sqlite3.connect(tmp_path / "audit.sqlite3") as db:
        log = db.execute("SELECT action, detail FROM moderation ORDER BY id").fetchall()
    assert log == [("bank add", "shared: 3 added"), ("bank import", "copy: 1 of 1 imported"),
                   ("bank remove", "shared: 1 removed")]
