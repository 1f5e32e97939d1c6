"""Path spellings and method overrides, as the backends' routers read them."""

import pytest

from proxy.paths import methods, spellings


@pytest.mark.parametrize(("raw", "canonical"), [
    ("/image/download", "/image/download"),
    ("//image//download/", "/image/download"),
    ("/image/./download", "/image/download"),
    ("/a/../image/download", "/image/download"),
    ("/../../image/download", "/image/download"),
    ("/%69mage/download", "/image/download"),
    ("/%2569mage", "/%2569mage"),  # '%' stays encoded: no router decodes twice into a path
    ("/image%2Fdownload", "/image%2fdownload"),  # an encoded '/' is not a separator to any router here
    ("/Image/DOWNLOAD", "/image/download"),
    ("/image\\download", "/image/download"),
    ("/image/download?url=x", "/image/download"),
])
def test_canonical_spelling(raw: str, canonical: str) -> None:
    assert spellings(raw)[0] == canonical


def test_format_suffix_is_also_tried() -> None:
    assert spellings("/users/alice/inbox.json") == ("/users/alice/inbox.json", "/users/alice/inbox")
    assert spellings("/image/process.webp") == ("/image/process.webp", "/image/process")


def test_overrides_add_methods() -> None:
    assert methods("post", {}) == ("POST",)
    assert methods("POST", {"X-HTTP-Method-Override": "put"}) == ("POST", "PUT")
    assert methods("POST", {"X-HTTP-Method": "PATCH", "X-Method-Override": "patch"}, {"_method": "delete"}) == (
        "POST", "PATCH", "DELETE")
