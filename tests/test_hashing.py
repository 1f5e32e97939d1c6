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


def test_pdq_kind_parses_and_measures_distance() -> None:
    kind = HASH_KINDS["pdq"]
    assert not kind.exact
    assert parse_hash("PDQ:" + "F" * 64) == ("pdq", "f" * 64)
    with pytest.raises(ValueError, match="is not a valid pdq hash"):
        parse_hash("pdq:" + "f" * 63)
    a, b = "f" * 64, "f" * 62 + "00"
    assert kind.matches(a, b) and not kind.matches(a, "0" * 64)
    assert HashList.of([("pdq", a)]).exact_kinds == frozenset()


def test_pdq_index_finds_the_nearest_usable_hash() -> None:
    from proxy.hashing import PdqHash, PdqIndex, pdq_of
    from tests.support.photos import photo_image

    coffee, rocket = pdq_of(photo_image("coffee")), pdq_of(photo_image("rocket"))
    index = PdqIndex([rocket.value, coffee.value])
    found = index.nearest([PdqHash(coffee.value, 100)])
    assert found is not None and found.index == 1 and found.distance == 0
    assert index.nearest([PdqHash(coffee.value, 49)]) is None
    assert index.nearest([PdqHash("0" * 64, 100)], max_distance=31) is None
