import hashlib

import pytest

from proxy.hashing import HASH_KINDS, HashList, parse_hash


def test_parse_hash_normalises_and_infers_kind() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert parse_hash(sha.upper()) == ("sha256", sha)
    assert parse_hash(f"sha256:{sha}") == ("sha256", sha)
    assert parse_hash(f"SHA256:{sha.upper()}") == ("sha256", sha)
    md5 = hashlib.md5(b"x").hexdigest()
    assert parse_hash(f" {md5} ") == ("md5", md5)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "is not a valid sha256 or md5 hash"),
        ("abc", "is not a valid sha256 or md5 hash"),
        ("z" * 64, "is not a valid sha256 or md5 hash"),
        ("md5:" + "a" * 64, "is not a valid md5 hash"),
        ("sha1:" + "a" * 40, "unknown hash kind 'sha1'"),
    ],
)
def test_parse_hash_refuses(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hash(bad)


def test_kinds_compute_their_digests() -> None:
    assert HASH_KINDS["sha256"].compute(b"x") == hashlib.sha256(b"x").hexdigest()
    assert HASH_KINDS["md5"].compute(b"x") == hashlib.md5(b"x").hexdigest()


def test_match_by_either_digest() -> None:
    sha, md5 = hashlib.sha256(b"x").hexdigest(), hashlib.md5(b"y").hexdigest()
    hl = HashList.of([("sha256", sha), ("md5", md5)])
    assert hl.kinds == {"sha256", "md5"}
    assert hl.match({"sha256": sha}) == f"sha256:{sha}"
    assert hl.match({"sha256": "0" * 64, "md5": md5}) == f"md5:{md5}"
    assert hl.match({"sha256": "0" * 64, "md5": "0" * 32}) is None
    assert hl.match({"sha256": "0" * 64}) is None  # md5 entries need the md5 digest
    assert len(hl) == 2
