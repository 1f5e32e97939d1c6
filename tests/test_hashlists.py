import hashlib

import pytest

from proxy.hashlists import HashList, parse_hash


def test_parse_hash_normalises_and_infers_kind() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert parse_hash(sha.upper()) == ("sha256", sha)
    assert parse_hash(f"sha256:{sha}") == ("sha256", sha)
    md5 = hashlib.md5(b"x").hexdigest()
    assert parse_hash(f" {md5} ") == ("md5", md5)


@pytest.mark.parametrize("bad", ["", "abc", "z" * 64, "md5:" + "a" * 64, "sha1:" + "a" * 40])
def test_parse_hash_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid sha256 or md5 hash"):
        parse_hash(bad)


def test_match_by_either_digest() -> None:
    sha, md5 = hashlib.sha256(b"x").hexdigest(), hashlib.md5(b"y").hexdigest()
    hl = HashList.of([("sha256", sha), ("md5", md5)])
    assert hl.match(sha, None) == f"sha256:{sha}"
    assert hl.match("0" * 64, md5) == f"md5:{md5}"
    assert hl.match("0" * 64, "0" * 32) is None
    assert len(hl) == 2
