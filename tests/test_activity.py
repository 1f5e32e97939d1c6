import json
from pathlib import Path

import pytest

from proxy.activity import img_sources, media_urls

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "activitypub").glob("*.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_media_url_of_real_server_deliveries(path: Path) -> None:
    doc = json.loads(path.read_text())
    expected = doc.pop("expected")
    found = media_urls(doc)
    assert sorted(found) == sorted(expected) and len(found) == len(set(found))


def test_fixtures_cover_the_servers() -> None:
    assert {p.stem.split("_")[0] for p in FIXTURES} >= {"mastodon", "lemmy", "pleroma", "misskey", "peertube"}


def test_plain_string_forms_and_arrays() -> None:
    activity = [
        {"type": "Announce", "object": "https://a.example/notes/1"},  # a bare URL object: not media
        {"type": "Create", "object": {"type": "Note", "attachment": "https://a.example/x.png", "image": ["https://a.example/y.png"],
                                      "icon": {"type": "Image", "url": {"type": "Link", "href": "https://a.example/z.png"}}}},
    ]
    assert media_urls(activity) == ["https://a.example/x.png", "https://a.example/y.png", "https://a.example/z.png"]


def test_only_http_urls_deduplicated_and_capped() -> None:
    note = {"attachment": [{"url": "javascript:alert(1)"}, {"url": "data:image/png;base64,AAAA"}, {"url": "ftp://a/b"},
                           {"url": "https://a.example/1.png"}, {"url": "https://a.example/1.png"}]
            + [{"url": f"https://a.example/{i}.jpg"} for i in range(100)]}
    urls = media_urls(note, limit=5)
    assert urls == ["https://a.example/1.png"] + [f"https://a.example/{i}.jpg" for i in range(4)]


@pytest.mark.parametrize("junk", [None, 42, "text", [], {}, {"attachment": None}, {"attachment": [None, 1, {"url": None}]},
                                  {"object": {"content": 5}}, {"contentMap": ["x"]}, {"content": "<img src=>"}])
def test_malformed_shapes_yield_nothing_and_do_not_raise(junk) -> None:
    assert media_urls(junk) == []


def test_deep_nesting_is_bounded() -> None:
    doc: dict = {"image": "https://a.example/top.png"}
    node = doc
    for _ in range(10_000):
        node["object"] = {}
        node = node["object"]
    node["image"] = "https://a.example/bottom.png"
    assert media_urls(doc) == ["https://a.example/top.png"]


def test_img_sources_from_broken_html() -> None:
    assert img_sources('<p>a<img src="https://x/1.png"><img alt=x src=https://x/2.png><img src="') == ["https://x/1.png", "https://x/2.png"]
