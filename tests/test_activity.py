import json
from pathlib import Path

import pytest

from proxy.activity import extract, img_sources, is_activity, media_urls

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
    assert extract(activity).objects == ["https://a.example/notes/1"]  # the backend fetches it: so must we


def test_only_http_urls_deduplicated_and_none_dropped() -> None:
    """No limit an attacker reaches first: decoys before the media do not push it out of the list, and
    the scheme is case-insensitive as URL parsers read it."""
    note = {"attachment": [{"url": "javascript:alert(1)"}, {"url": "data:image/png;base64,AAAA"}, {"url": "ftp://a/b"},
                           {"url": "https://a.example/1.png"}, {"url": "https://a.example/1.png"}]
            + [{"url": f"https://a.example/{i}.jpg"} for i in range(100)]
            + [{"url": "HTTP://a.example/last.png"}, {"url": "https://a.example/" + "x" * 10_000 + ".png"}]}
    urls = media_urls(note)
    assert urls[:2] == ["https://a.example/1.png", "https://a.example/0.jpg"] and len(urls) == 103
    assert "http://a.example/last.png" in urls and any(len(u) > 10_000 for u in urls)


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
    found = extract(doc)
    assert found.problem is not None and "deeper" in found.problem  # reported, so the caller fails closed


def test_activities_are_known_by_their_context() -> None:
    assert is_activity({"@context": "https://www.w3.org/ns/activitystreams", "type": "Create"})
    assert is_activity({"@context": ["https://www.w3.org/ns/activitystreams", {"toot": "http://joinmastodon.org/ns#"}]})
    assert not is_activity({"type": "Create"}) and not is_activity([{"@context": "x"}])


def test_img_sources_from_broken_html() -> None:
    assert img_sources('<p>a<img src="https://x/1.png"><img alt=x src=https://x/2.png><img src="') == ["https://x/1.png", "https://x/2.png"]
