"""`fedi-filter sweep`: stored media judged by the one pipeline, acted on, resumable; directories and a real
S3 server (moto) on loopback. The flag path uses the face stand-in policy (tests/support/configs.FACES)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import main
from proxy.sweep import parse_duration, parse_s3_url
from tests.support import s3 as s3support
from tests.support.configs import FACES, config_dict
from tests.support.media import animated_gif
from tests.support.photos import photo

ROOT = Path(__file__).resolve().parent.parent

FLAGGED = {"astronaut.jpg", "sub/deep/hopper.jpg", "anim-face.gif", "dup/astronaut-copy.jpg"}
UNJUDGED = {"broken.png": "corrupt", "notes.txt": "unsupported"}
CLEAN = {"coffee.jpg", "sub/rocket.png", "chelsea.webp", "anim-clean.gif"}


def tree_files() -> dict[str, bytes]:
    """Benign photos, face photos (the stand-in), a 4-frame GIF with one face frame among clean ones and
    one without, a duplicate, a truncated PNG and a text file."""
    return {
        "coffee.jpg": photo("coffee"),
        "sub/rocket.png": photo("rocket", "PNG"),
        "chelsea.webp": photo("chelsea", "WEBP"),
        "anim-clean.gif": animated_gif(["coffee", "rocket", "chelsea", "coins"]),
        "anim-face.gif": animated_gif(["coffee", "rocket", "astronaut", "chelsea"]),
        "astronaut.jpg": photo("astronaut"),
        "sub/deep/hopper.jpg": photo("grace_hopper"),
        "dup/astronaut-copy.jpg": photo("astronaut"),
        "broken.png": photo("coffee", "PNG")[:999],
        "notes.txt": b"meeting notes: nothing to see here\n",
    }


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@dataclass
class Result:
    rc: int
    lines: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> dict[str, dict[str, Any]]:
        return {line["key"]: line for line in self.lines if line["type"] == kind}

    @property
    def summary(self) -> dict[str, Any]:
        (summary,) = [line for line in self.lines if line["type"] == "summary"]
        return summary


@dataclass
class Env:
    tmp: Path
    media: Path
    config: Path
    runs: Iterator[int]

    def sweep(self, *args: str, capsys: pytest.CaptureFixture[str]) -> Result:
        """Run the command in this process (the blockbuster fixture watches its event loop)."""
        report = self.tmp / f"report-{next(self.runs)}.jsonl"
        capsys.readouterr()
        rc = main(["--log-level", "warning", "sweep", "--config", str(self.config), "--report", str(report), *args])
        err = capsys.readouterr().err
        lines = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
        return Result(rc, lines, err)


def write_config(tmp: Path, **policy: Any) -> Path:
    raw = config_dict({**FACES, **policy})
    raw["server"]["audit_db"] = str(tmp / "audit.sqlite3")
    path = tmp / "faces.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def env(tmp_path: Path) -> Env:
    media = tmp_path / "media"
    write_tree(media, tree_files())
    return Env(tmp_path, media, write_config(tmp_path), itertools.count())


def test_parsers() -> None:
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("7d") == 7 * 86400
    assert parse_duration("1.5h") == 5400 and parse_duration("2w") == 14 * 86400
    for bad in ("", "7", "d", "-1d", "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_s3_url("s3://media/pictrs/files") == ("media", "pictrs/files")
    assert parse_s3_url("s3://media") == ("media", "")
    for bad in ("s3:///x", "http://media/x", "media/x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_report_lists_exactly_the_flagged_and_changes_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    before = read_tree(env.media)
    r = env.sweep(str(env.media), capsys=capsys)
    assert r.rc == 1, r.stderr
    assert set(r.of("flagged")) == FLAGGED
    for key, line in r.of("flagged").items():
        assert line["labels"] == ["portrait"] and line["action"] == "report", line
        assert line["size"] == len(before[key]) and line["sha256"] and line["scores"]["nudenet"]
    assert {k: v["error_kind"] for k, v in r.of("unjudged").items()} == UNJUDGED
    assert all(v["action"] == "none" for v in r.of("unjudged").values())
    # the duplicate's bytes were judged once: one of the two copies got the sha256 cache's answer
    copies = [r.of("flagged")[k]["decided_by"] for k in ("astronaut.jpg", "dup/astronaut-copy.jpg")]
    assert sorted(copies) == ["cache", "model"]
    s = r.summary
    assert (s["listed"], s["judged"], s["flagged"], s["unjudged"], s["clean"]) == (10, 10, 4, 2, 4)
    assert read_tree(env.media) == before
    assert "flagged 4" in r.stderr
    with sqlite3.connect(env.tmp / "audit.sqlite3") as db:
        sources = db.execute("SELECT DISTINCT source FROM decisions").fetchall()
        marks = db.execute("SELECT key, outcome FROM sweep_progress").fetchall()
    assert sources == [("sweep",)]
    assert dict(marks) == {**dict.fromkeys(FLAGGED, "flagged"), **dict.fromkeys(UNJUDGED, "unjudged"),
                           **dict.fromkeys(CLEAN, "clean")}

    # a rerun judges nothing new; a changed file is judged again (and now flagged)
    again = env.sweep(str(env.media), capsys=capsys)
    assert again.rc == 0 and again.summary["judged"] == 0 and again.summary["skipped"] == 10
    assert again.of("flagged") == {} and again.of("unjudged") == {}
    (env.media / "coffee.jpg").write_bytes(photo("grace_hopper"))
    changed = env.sweep(str(env.media), capsys=capsys)
    assert changed.rc == 1 and changed.summary["judged"] == 1 and set(changed.of("flagged")) == {"coffee.jpg"}
    assert changed.of("flagged")["coffee.jpg"]["decided_by"] == "cache"  # hopper's bytes were judged before

    # --rescan judges every object again, answered from the sha256 verdict cache kept in the store
    rescan = env.sweep("--rescan", str(env.media), capsys=capsys)
    assert rescan.summary["judged"] == 10 and set(rescan.of("flagged")) == FLAGGED | {"coffee.jpg"}
    assert {v["decided_by"] for v in rescan.of("flagged").values()} == {"cache"}


def test_quarantine_moves_exactly_the_flagged(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    before = read_tree(env.media)
    quarantine = env.media / "quarantine"  # inside the swept tree: never swept itself
    r = env.sweep("--action", "quarantine", "--quarantine", str(quarantine), str(env.media), capsys=capsys)
    assert r.rc == 1, r.stderr
    assert set(r.of("flagged")) == FLAGGED and r.summary["quarantined"] == 4
    assert {v["action"] for v in r.of("flagged").values()} == {"quarantine"}
    assert read_tree(env.media / "quarantine") != {}
    left = {k: v for k, v in read_tree(env.media).items() if not k.startswith("quarantine/")}
    assert left == {k: v for k, v in before.items() if k not in FLAGGED}
    kept = {p.name: p for p in quarantine.iterdir() if p.name != "manifest.jsonl"}
    for key in FLAGGED:
        sha = r.of("flagged")[key]["sha256"]
        assert kept[sha].read_bytes() == before[key]
        assert r.of("flagged")[key]["quarantined_to"] == str(kept[sha])
    assert len(kept) == 3  # the two astronaut copies are one file
    assert {p.stat().st_mode & 0o777 for p in quarantine.iterdir()} == {0o600}
    assert quarantine.stat().st_mode & 0o777 == 0o700
    manifest = [json.loads(line) for line in (quarantine / "manifest.jsonl").read_text().splitlines()]
    assert {m["key"] for m in manifest} == FLAGGED and {m["source"] for m in manifest} == {str(env.media)}
    assert all(m["quarantined"] == m["sha256"] for m in manifest)

    again = env.sweep("--action", "quarantine", "--quarantine", str(quarantine), str(env.media), capsys=capsys)
    assert again.rc == 0 and again.summary["listed"] == 6 and again.summary["judged"] == 0


def test_reported_objects_are_acted_on_when_a_later_run_asks(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert env.sweep(str(env.media), capsys=capsys).rc == 1
    r = env.sweep("--action", "quarantine", "--quarantine", str(env.tmp / "q"), str(env.media), capsys=capsys)
    assert set(r.of("flagged")) == FLAGGED and r.summary["judged"] == 4 and r.summary["skipped"] == 6
    assert not any((env.media / k).exists() for k in FLAGGED)


def test_delete_needs_yes(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    before = read_tree(env.media)
    r = env.sweep("--action", "delete", str(env.media), capsys=capsys)
    assert r.rc == 2 and "--yes" in r.stderr and r.lines == []
    assert read_tree(env.media) == before
    r = env.sweep("--action", "delete", "--yes", str(env.media), capsys=capsys)
    assert r.rc == 1 and set(r.of("flagged")) == FLAGGED and r.summary["deleted"] == 4
    assert {v["action"] for v in r.of("flagged").values()} == {"delete"}
    assert read_tree(env.media) == {k: v for k, v in before.items() if k not in FLAGGED}


def test_unjudged_media_is_never_moved_or_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Too large to read (limits.max_bytes), corrupt, unsupported: reported apart, left in place, even
    under --action delete --yes."""
    media = tmp_path / "media"
    write_tree(media, tree_files())
    env = Env(tmp_path, media, write_config(tmp_path, limits={"max_bytes": 50_000}), itertools.count())
    before = read_tree(media)
    big = {k for k, v in before.items() if len(v) > 50_000}
    assert {"sub/deep/hopper.jpg", "anim-face.gif"} <= big
    r = env.sweep("--action", "delete", "--yes", str(media), capsys=capsys)
    assert set(r.of("flagged")) == FLAGGED - big
    assert {k: v["error_kind"] for k, v in r.of("unjudged").items()} == {**UNJUDGED, **dict.fromkeys(big, "too_large")}
    assert read_tree(media) == {k: v for k, v in before.items() if k not in FLAGGED - big}


def test_since_judges_only_recent_objects(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    old = time.time() - 10 * 86400
    for path in env.media.rglob("*"):
        if path.name != "astronaut.jpg":
            os.utime(path, (old, old))
    r = env.sweep("--since", "1d", str(env.media), capsys=capsys)
    assert r.rc == 1 and r.summary["listed"] == 1 and set(r.of("flagged")) == {"astronaut.jpg"}
    r = env.sweep("--since", "1x", str(env.media), capsys=capsys)
    assert r.rc == 2 and "not a duration" in r.stderr


def test_ctrl_c_keeps_progress_and_the_same_command_resumes(env: Env) -> None:
    """A real subprocess paused after 2 objects (the test hook), then SIGINT: it exits 130 and says how to
    resume; the same command then judges exactly the rest, and the report holds each flagged object once."""
    report = env.tmp / "report.jsonl"
    cmd = [sys.executable, "-m", "proxy", "sweep", "--config", str(env.config), "--report", str(report),
           "--concurrency", "1", str(env.media)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "FEDI_FILTER_SWEEP_PAUSE_AFTER": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "sweep: paused after 2 objects" in line:
            break
    else:
        pytest.fail("".join(seen))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; progress is saved. Resume with the same command:" in err
    assert f"fedi-filter sweep --config {env.config}" in err
    first = [json.loads(line) for line in report.read_text().splitlines()]
    assert first[-1]["type"] == "summary" and first[-1]["interrupted"] is True and first[-1]["judged"] == 2
    with sqlite3.connect(env.tmp / "audit.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM sweep_progress").fetchone() == (2,)

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    summary = lines[-1]
    assert (summary["skipped"], summary["judged"], summary["interrupted"]) == (2, 8, False)
    flagged = [line["key"] for line in lines if line["type"] == "flagged"]
    assert sorted(flagged) == sorted(FLAGGED)
    assert sorted(line["key"] for line in lines if line["type"] == "unjudged") == sorted(UNJUDGED)


# --- S3 ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with s3support.moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(moto: str, env: Env, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> tuple[Any, str]:
    for key, value in s3support.aws_env(env.tmp).items():
        monkeypatch.setenv(key, value)
    s3 = s3support.client(moto)
    name = f"media-{request.node.name.replace('_', '-')[:40].lower()}"
    s3.create_bucket(Bucket=name)
    for key, data in tree_files().items():
        s3.put_object(Bucket=name, Key=f"pictrs/{key}", Body=data)
    s3.put_object(Bucket=name, Key="elsewhere/astronaut.jpg", Body=photo("astronaut"))
    return s3, name


def test_s3_report_quarantine_and_rerun(moto: str, env: Env, bucket: tuple[Any, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    s3, name = bucket
    before = s3support.objects(s3, name)
    source = f"s3://{name}/pictrs/"
    r = env.sweep("--endpoint-url", moto, source, capsys=capsys)
    assert r.rc == 1, r.stderr
    assert set(r.of("flagged")) == {f"pictrs/{k}" for k in FLAGGED}
    assert {k: v["error_kind"] for k, v in r.of("unjudged").items()} == {f"pictrs/{k}": v for k, v in UNJUDGED.items()}
    assert r.of("flagged")["pictrs/astronaut.jpg"]["location"] == f"s3://{name}/pictrs/astronaut.jpg"
    assert s3support.objects(s3, name) == before

    s3.create_bucket(Bucket="quarantine")
    r = env.sweep("--endpoint-url", moto, "--action", "quarantine", "--quarantine", "s3://quarantine/held", source,
                  capsys=capsys)
    assert r.rc == 1 and r.summary["quarantined"] == 4 and r.summary["skipped"] == 6, r.stderr
    assert s3support.objects(s3, name) == {k: v for k, v in before.items() if k.removeprefix("pictrs/") not in FLAGGED}
    held = s3support.objects(s3, "quarantine", "held/")
    for key in FLAGGED:
        sha = r.of("flagged")[f"pictrs/{key}"]["sha256"]
        assert held[f"held/{sha}"] == before[f"pictrs/{key}"]
    manifests = [json.loads(v) for k, v in held.items() if k.startswith("held/manifest/")]
    assert {m["key"] for m in manifests} == {f"pictrs/{k}" for k in FLAGGED}

    again = env.sweep("--endpoint-url", moto, source, capsys=capsys)
    assert again.rc == 0 and again.summary["judged"] == 0 and again.summary["listed"] == 6


def test_s3_delete(moto: str, env: Env, bucket: tuple[Any, str], capsys: pytest.CaptureFixture[str]) -> None:
    s3, name = bucket
    before = s3support.objects(s3, name)
    r = env.sweep("--endpoint-url", moto, "--action", "delete", f"s3://{name}/pictrs", capsys=capsys)
    assert r.rc == 2 and s3support.objects(s3, name) == before
    r = env.sweep("--endpoint-url", moto, "--action", "delete", "--yes", f"s3://{name}/pictrs", capsys=capsys)
    assert r.rc == 1 and r.summary["deleted"] == 4, r.stderr
    assert s3support.objects(s3, name) == {k: v for k, v in before.items() if k.removeprefix("pictrs/") not in FLAGGED}
    assert "elsewhere/astronaut.jpg" in s3support.objects(s3, name)


def test_s3_missing_bucket_is_a_clear_error(moto: str, env: Env, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in s3support.aws_env(env.tmp).items():
        monkeypatch.setenv(key, value)
    r = env.sweep("--endpoint-url", moto, "s3://no-such-bucket/x", capsys=capsys)
    assert r.rc == 2 and "s3://no-such-bucket/x" in r.stderr and r.lines == []


def test_a_terminal_gets_a_live_bar_and_a_pipe_plain_lines(env: Env) -> None:
    """stderr on a pseudo-terminal: the bar (objects, MB, rate, ETA, flagged); on a pipe: no escape codes."""
    import pty

    cmd = [sys.executable, "-m", "proxy", "sweep", "--config", str(env.config), "--report", str(env.tmp / "r.jsonl"),
           str(env.media)]
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**os.environ, "COLUMNS": "200"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 1
    raw = out.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "\x1b[" in raw
    bar = [line for line in re.split(r"[\r\n]+", text) if line.startswith("sweep ") and "10/10" in line]
    assert bar, text
    assert all(word in bar[-1] for word in ("MB/s", "obj/s", "ETA", "flagged 4", "unjudged 2")), bar[-1]

    piped = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "\x1b[" not in piped.stderr and "10 skipped" in piped.stderr
