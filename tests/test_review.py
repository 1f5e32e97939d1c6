"""The review page, /admin/: login, sessions, CSRF, CSP, media only to a session, moderator actions and
their audit; then the page itself in a real headless browser (Debian's chromium driven by Playwright).

Photos are benign: coffee, rocket and chelsea quarantined by a policy that flags everything (the tiny
random-weight CLIP with a threshold every score passes)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.banks import ALLOW, OWN
from tests.support.configs import ALWAYS, make_config, policy
from tests.support.hosts import Backend
from tests.support.media import variant
from tests.support.photos import photo
from tests.support.servers import Client, audit_rows, post_media, services, start

TOKEN = "secret"  # tests/support/configs.config_dict's admin_token
CHROMIUM = os.environ.get("FFP_CHROMIUM", "/usr/bin/chromium")



def quarantining(tmp_path: Path, **sections: Any) -> Any:
    """Everything is flagged and quarantined into tmp_path/quarantine."""
    pol = policy(ALWAYS, actions={"flagged": "quarantine"}, quarantine_dir=str(tmp_path / "quarantine"))
    return make_config(pol, **sections)


async def login(client: TestClient) -> str:
    """Log in as a browser does: GET the form (its CSRF token and pre-login cookie), POST it; the session's
    CSRF token, read from the page."""
    page = await (await client.get("/admin/")).text()
    csrf = re.search(r"name=csrf value='([^']+)'", page)
    assert csrf is not None
    resp = await client.post("/admin/login", data={"token": TOKEN, "csrf": csrf.group(1)}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    page = await (await client.get("/admin/")).text()
    found = re.search(r"name=csrf value='([^']+)'", page)
    assert found is not None and "id=decisions" in page
    return found.group(1)


async def test_nothing_without_login(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await start(aiohttp_client, quarantining(tmp_path))
    status, body = await post_media(client, photo("coffee"))
    assert status == 406 and body["action"] == "quarantine"
    resp = await client.get("/admin/")
    page = await resp.text()
    assert resp.status == 200 and "name=token" in page and "id=decisions" not in page and body["sha256"] not in page
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    resp = await client.get(f"/admin/media/main/{body['sha256']}")
    assert resp.status == 401 and await resp.read() == b"log in first"
    resp = await client.post("/admin/act", data={"op": "allow", "sha256": body["sha256"], "policy": "main"})
    assert resp.status == 401
    assert await services(client).banks.entries(ALLOW) == []


async def test_login_needs_the_token_and_the_forms_csrf(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await start(aiohttp_client, quarantining(tmp_path))
    page = await (await client.get("/admin/")).text()
    csrf = re.search(r"name=csrf value='([^']+)'", page)
    assert csrf is not None
    resp = await client.post("/admin/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 403 and "ffp_session" not in resp.cookies
    csrf = re.search(r"name=csrf value='([^']+)'", await resp.text())  # the refusal gives a fresh form
    assert csrf is not None
    resp = await client.post("/admin/login", data={"token": "wrong", "csrf": csrf.group(1)}, allow_redirects=False)
    assert resp.status == 401 and "ffp_session" not in resp.cookies
    page = await (await client.get("/admin/")).text()
    csrf = re.search(r"name=csrf value='([^']+)'", page)
    assert csrf is not None
    resp = await client.post("/admin/login", data={"token": TOKEN, "csrf": csrf.group(1)}, allow_redirects=False)
    assert resp.status == 303
    cookie = resp.headers["Set-Cookie"]
    assert "ffp_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie


async def test_actions_without_a_csrf_token_are_refused(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await start(aiohttp_client, quarantining(tmp_path))
    _, body = await post_media(client, photo("coffee"))
    csrf = await login(client)
    for form in ({}, {"csrf": "x" * len(csrf)}):
        resp = await client.post("/admin/act", data={"op": "allow", "sha256": body["sha256"], "policy": "main", **form})
        assert resp.status == 403
    assert await services(client).banks.entries(ALLOW) == []
    assert (await client.post("/admin/logout", data={}, allow_redirects=False)).status == 403


async def test_allow_fixes_a_false_positive_for_resized_copies_and_is_audited(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await start(aiohttp_client, quarantining(tmp_path))
    svc = services(client)
    _, body = await post_media(client, photo("coffee"))
    sha256 = body["sha256"]
    assert {e.sha256 for e in await svc.banks.entries(OWN)} == {sha256}
    status, copy_ = await post_media(client, variant("coffee"))
    assert status == 406 and copy_["decided_by"] == "bank"  # the own bank knows it

    csrf = await login(client)
    media = await client.get(f"/admin/media/main/{sha256}")
    assert media.status == 200 and await media.read() == photo("coffee")
    assert media.headers["Cache-Control"] == "no-store" and media.headers["X-Content-Type-Options"] == "nosniff"

    resp = await client.post("/admin/act", data={"op": "allow", "sha256": sha256, "policy": "main", "csrf": csrf,
                                                 "back": "action=quarantine&evil=1"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/admin/?action=quarantine&done=allow")
    assert {e.kind for e in await svc.banks.entries(ALLOW)} == {"sha256", "pdq"}
    assert await svc.banks.entries(OWN) == []
    for data in (photo("coffee"), variant("coffee"), variant("coffee", scale=0.5, quality=40)):
        status, verdict = await post_media(client, data)
        assert status == 200 and verdict["decided_by"] in ("allowlist", "bank"), verdict
    status, verdict = await post_media(client, variant("rocket"))
    assert status == 406 and verdict["decided_by"] == "model"

    resp = await client.post("/admin/act", data={"op": "delete", "sha256": sha256, "policy": "main", "csrf": csrf},
                             allow_redirects=False)
    assert resp.status == 303 and not (tmp_path / "quarantine" / sha256).exists()
    log = await audit_rows(svc, "SELECT actor, action, sha256, detail FROM moderation ORDER BY id")
    assert [(r["action"], r["sha256"]) for r in log] == [("allow", sha256), ("delete", sha256)]
    assert log[0]["actor"].startswith("admin@") and "allow bank" in log[0]["detail"]


async def test_allowing_a_copy_allows_the_bank_entry_it_matched(aiohttp_client: Client, tmp_path: Path) -> None:
    """No quarantined copy, no own-bank entry of its own: the copy was refused by the own bank entry of
    another file, and allowing the copy allows that entry's PDQ too."""
    client = await start(aiohttp_client, make_config(policy(ALWAYS)))
    assert (await post_media(client, photo("coffee")))[0] == 406
    status, copy_ = await post_media(client, variant("coffee"))
    assert status == 406 and copy_["decided_by"] == "bank"
    assert (await post_media(client, variant("coffee", scale=0.5)))[0] == 406
    csrf = await login(client)
    await client.post("/admin/act", data={"op": "allow", "sha256": copy_["sha256"], "policy": "main", "csrf": csrf})
    status, verdict = await post_media(client, variant("coffee", scale=0.5))
    assert status == 200 and verdict["decided_by"] == "bank" and verdict["detail"].startswith("bank allow: pdq:")
    assert await services(client).banks.entries(OWN) == [e for e in await services(client).banks.entries(OWN)
                                                         if e.kind == "sha256"]


async def test_confirm_deny_is_final(aiohttp_client: Client, tmp_path: Path) -> None:
    pol = policy(ALWAYS, actions={"flagged": "quarantine"}, quarantine_dir=str(tmp_path / "q"))
    client = await start(aiohttp_client, make_config(pol))
    _, body = await post_media(client, photo("rocket"))
    csrf = await login(client)
    await client.post("/admin/act", data={"op": "deny", "sha256": body["sha256"], "policy": "main", "csrf": csrf})
    status, verdict = await post_media(client, variant("rocket"))
    assert status == 406 and verdict["decided_by"] == "bank" and verdict["detail"].startswith("bank deny:")


async def test_filters_list_matching_decisions(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await start(aiohttp_client, quarantining(tmp_path))
    _, flagged = await post_media(client, photo("coffee"))
    _, clean = await post_media(client, b"%PDF-1.7\n")
    await login(client)
    page = await (await client.get("/admin/?action=quarantine&label=flagged&source=validate&instance=pictrs")).text()
    assert flagged["sha256"][:12] in page and "unsupported" not in page
    page = await (await client.get("/admin/?action=reject")).text()
    assert flagged["sha256"][:12] not in page and "not an image or video" in page
    page = await (await client.get("/admin/?label=other")).text()
    assert "No decisions match." in page
    page = await (await client.get("/admin/?since=2999-01-01T00:00")).text()
    assert "No decisions match." in page
    assert clean["action"] == "reject"


async def test_a_claimed_host_never_serves_the_review_page(aiohttp_client: Client, aiohttp_server: Any,
                                                           tmp_path: Path) -> None:
    backend = Backend()
    server = await aiohttp_server(backend.app())
    instances = [{"name": "lemmy", "kind": "lemmy", "hosts": ["lemmy.test"], "upstream": f"http://127.0.0.1:{server.port}",
                  "policy": "main"}]
    client = await start(aiohttp_client, quarantining(tmp_path, instances=instances))
    resp = await client.get("/admin/", headers={"Host": "lemmy.test"})
    assert "fedi-filter review" not in await resp.text()
    assert [s.path_qs for s in backend.seen] == ["/admin/"]


# --- in a real browser -----------------------------------------------------------------------------


def _browser_or_skip() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; scripts/install-test-tools.sh)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; scripts/install-test-tools.sh)")
    return async_playwright


FORM_WITHOUT_CSRF = """sha => {
    const form = document.createElement('form');
    form.method = 'post';
    form.action = '/admin/act';
    for (const [name, value] of Object.entries({op: 'allow', sha256: sha, policy: 'main'})) {
        const input = document.createElement('input');
        input.type = 'hidden'; input.name = name; input.value = value;
        form.append(input);
    }
    document.body.append(form);
    form.submit();
}"""


async def test_review_page_in_a_browser(aiohttp_client: Client, tmp_path: Path) -> None:
    async_playwright = _browser_or_skip()
    client = await start(aiohttp_client, quarantining(tmp_path))
    shas = {}
    for name in ("chelsea", "rocket", "coffee"):
        _, body = await post_media(client, photo(name))
        shas[name] = body["sha256"]
    base = str(client.make_url("/admin/"))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            resp = await page.goto(base)
            assert resp is not None and resp.status == 200
            assert await page.locator("img").count() == 0 and await page.locator("input[name=token]").count() == 1
            media = await page.goto(f"{base}media/main/{shas['coffee']}")
            assert media is not None and media.status == 401
            await page.goto(base)
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#decisions")
            errors.clear()  # the 401 of the media URL above
            previews = page.locator(".preview img")
            assert await previews.count() == 3
            await page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            for i in range(3):
                style = await previews.nth(i).evaluate("e => getComputedStyle(e).filter")
                assert "blur" in style and "grayscale(1)" in style, style
            await page.screenshot(path=str(tmp_path / "review-page.png"), full_page=True)
            if os.environ.get("FFP_REVIEW_SCREENSHOT"):
                shutil.copy(tmp_path / "review-page.png", os.environ["FFP_REVIEW_SCREENSHOT"])

            await page.locator(".preview").nth(0).click()
            assert await previews.nth(0).evaluate("e => getComputedStyle(e).filter") == "none"
            await page.locator(".preview").nth(1).click()  # one at a time: the first goes back to blurred
            assert await previews.nth(1).evaluate("e => getComputedStyle(e).filter") == "none"
            assert "blur" in await previews.nth(0).evaluate("e => getComputedStyle(e).filter")

            assert errors == []  # nothing refused by the Content-Security-Policy, no script error

            async with page.expect_navigation() as refused:  # until the refusal page has loaded
                await page.evaluate(FORM_WITHOUT_CSRF, shas["coffee"])
            response = await refused.value
            assert response is not None and response.url.endswith("/admin/act") and response.status == 403
            assert "no valid CSRF token" in await page.content()
            assert (await post_media(client, variant("coffee")))[0] == 406

            await page.goto(base)
            row = page.locator(f"tr[data-sha256='{shas['coffee']}']").first
            await row.locator("button[value=allow]").click()
            await page.wait_for_selector(".flash")
            assert "allow" in await page.locator(".flash").inner_text()
        finally:
            await browser.close()
    status, verdict = await post_media(client, variant("coffee"))
    assert status == 200 and verdict["decided_by"] in ("allowlist", "bank")
    assert (await post_media(client, variant("chelsea")))[0] == 406
