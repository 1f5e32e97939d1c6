"""The review page, ``/admin/``: recent decisions, blurred previews of quarantined media, moderator actions.

Served on the API host only (a host an instance claims is reverse-proxied before any route is reached).
Login with ``server.admin_token`` gives a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS);
every POST form carries the session's CSRF token (the login form a token bound to a pre-login cookie);
a strict Content-Security-Policy allows only this server's own CSS, script and images, nothing inline.
Media bytes go only to a logged-in session, and only quarantined copies of raster images.

Actions, each written to the store's moderation log (who, what, which sha256):

- ``allow`` (a false positive): the file's sha256 and PDQ go to the ``allow`` bank (beats the own bank and
  the classifier, also for resized or re-encoded copies); its own-bank entries and cached verdicts go;
- ``deny`` (confirmed): sha256 and PDQ go to the ``deny`` bank (final);
- ``delete``: the quarantined copy is deleted.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from .app import SERVICES, Services
from .bankcli import file_hashes
from .banks import ALLOW, DENY, OWN, file_entries
from .hashing import PdqHash
from .media import sniff
from .stores import DecisionQuery, ModerationRow

log = logging.getLogger(__name__)

SESSION_COOKIE = "ffp_session"
LOGIN_COOKIE = "ffp_login"
SESSION_TTL_S = 8 * 3600
MAX_SESSIONS = 64
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
PREVIEW_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/avif"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STATIC_DIR = Path(__file__).resolve().parent / "static"
_STATIC = {name: (_STATIC_DIR / name).read_bytes() for name in ("review.css", "review.js")}
_STATIC_TYPES = {"review.css": "text/css", "review.js": "text/javascript"}
FILTERS = ("action", "label", "source", "instance", "since", "until")


@dataclass
class Session:
    id: str
    csrf: str
    expires: float
    actor: str


@dataclass
class ReviewState:
    sessions: dict[str, Session] = field(default_factory=dict)

    def new(self, actor: str) -> Session:
        now = time.time()
        for sid in [s.id for s in self.sessions.values() if s.expires < now]:
            del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[min(self.sessions.values(), key=lambda s: s.expires).id]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + SESSION_TTL_S, actor)
        self.sessions[session.id] = session
        return session

    def get(self, request: web.Request) -> Session | None:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is None or session.expires < time.time():
            return None
        return session


REVIEW = web.AppKey("review", ReviewState)


def _secure(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _set_cookie(resp: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/admin", httponly=True, samesite="Strict", secure=_https(request))


def _page(title: str, body: str, status: int = 200) -> web.StreamResponse:
    doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           "<meta name=viewport content='width=device-width, initial-scale=1'>"
           "<link rel=stylesheet href='/admin/static/review.css'>"
           "<script src='/admin/static/review.js' defer></script></head>"
           f"<body>{body}</body></html>")
    return _secure(web.Response(text=doc, status=status, content_type="text/html"))


def _redirect(location: str, status: int = 303) -> web.StreamResponse:
    return _secure(web.Response(status=status, headers={"Location": location}))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _login_page(request: web.Request, error: str = "", status: int = 200) -> web.StreamResponse:
    token = secrets.token_urlsafe(32)
    message = f"<p class=error>{_e(error)}</p>" if error else ""
    resp = _page("fedi-filter review: log in", (
        "<form class=login method=post action='/admin/login'><h1>fedi-filter review</h1>"
        f"{message}<label>Admin token <input type=password name=token autocomplete=current-password required "
        f"autofocus></label><input type=hidden name=csrf value='{_e(token)}'><button type=submit>Log in</button>"
        "</form>"), status)
    _set_cookie(resp, request, LOGIN_COOKIE, token, 600)
    return resp


def _disabled() -> web.StreamResponse:
    return _page("fedi-filter review", "<p class=error>The review page is disabled: set server.admin_token.</p>", 403)


async def login(request: web.Request) -> web.StreamResponse:
    token = request.app[SERVICES].config.server.admin_token
    if not token:
        return _disabled()
    form = await request.post()
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = str(form.get("csrf", ""))
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return _login_page(request, "The form expired or did not come from this page; try again.", 403)
    if not hmac.compare_digest(str(form.get("token", "")).encode(), token.encode()):
        log.warning("review page: failed login from %s", request.remote)
        return _login_page(request, "Wrong admin token.", 401)
    session = request.app[REVIEW].new(f"admin@{request.remote}")
    log.info("review page: login from %s", request.remote)
    resp = _redirect("/admin/")
    _set_cookie(resp, request, SESSION_COOKIE, session.id, SESSION_TTL_S)
    resp.del_cookie(LOGIN_COOKIE, path="/admin")
    return resp


def _csrf_ok(session: Session, form: Any) -> bool:
    return hmac.compare_digest(str(form.get("csrf", "")).encode(), session.csrf.encode())


async def logout(request: web.Request) -> web.StreamResponse:
    session = request.app[REVIEW].get(request)
    form = await request.post()
    if session is None or not _csrf_ok(session, form):
        return _page("fedi-filter review", "<p class=error>Refused: no session or no CSRF token.</p>", 403)
    request.app[REVIEW].sessions.pop(session.id, None)
    resp = _redirect("/admin/")
    resp.del_cookie(SESSION_COOKIE, path="/admin")
    return resp


def _parse_time(value: str) -> float | None:
    """``YYYY-MM-DDTHH:MM`` (a datetime-local input, read as UTC), or None when empty or malformed."""
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp() if value else None
    except ValueError:
        return None


def _quarantined(services: Services, policy: str, sha256: str) -> Path | None:
    pol = services.config.policies.get(policy)
    if pol is None or not pol.quarantine_dir or not _SHA256.fullmatch(sha256):
        return None
    return Path(pol.quarantine_dir) / sha256


def _select(name: str, current: str, options: list[str]) -> str:
    opts = "".join(f"<option{' selected' if o == current else ''} value='{_e(o)}'>{_e(o) or 'any'}</option>"
                   for o in ["", *options])
    return f"<label>{_e(name)}<select name={name}>{opts}</select></label>"


async def index(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.config.server.admin_token:
        return _disabled()
    session = request.app[REVIEW].get(request)
    if session is None:
        return _login_page(request)
    store = services.store.store
    q = {k: request.query.get(k, "").strip() for k in FILTERS}
    query = DecisionQuery(action=q["action"], label=q["label"], source=q["source"], instance=q["instance"],
                          since=_parse_time(q["since"]), until=_parse_time(q["until"]), limit=200)
    notice = ""
    rows: list[dict[str, Any]] = []
    moderation: list[ModerationRow] = []
    try:
        if store is None:
            raise NotImplementedError("no store is configured (server.audit_db)")
        await services.store.flush()
        rows = await store.decisions(query)
        moderation = await store.moderation_log(20)
    except NotImplementedError as exc:
        notice = f"<p class=error>Decisions cannot be listed: {_e(exc)}</p>"
    done = request.query.get("done", "")
    if done:
        notice += f"<p class=flash role=status>{_e(done)}</p>"
    paths = {(r["policy"], r["sha256"]): _quarantined(services, r["policy"], r["sha256"]) for r in rows}
    loop = asyncio.get_running_loop()
    present = await loop.run_in_executor(None, lambda: {k for k, p in paths.items() if p is not None and p.is_file()})
    back = urllib.parse.urlencode({k: v for k, v in q.items() if v})
    csrf = _e(session.csrf)
    body_rows = []
    for r in rows:
        key = (r["policy"], r["sha256"])
        preview = "-"
        actions = ""
        if key in present:
            src = f"/admin/media/{urllib.parse.quote(r['policy'])}/{r['sha256']}"
            preview = (f"<button type=button class=preview aria-pressed=false title='Click to reveal (one at a time)'>"
                       f"<img src='{_e(src)}' alt='quarantined media, blurred'></button>")
        if r["sha256"]:
            hidden = (f"<input type=hidden name=csrf value='{csrf}'><input type=hidden name=sha256 value='{_e(r['sha256'])}'>"
                      f"<input type=hidden name=policy value='{_e(r['policy'])}'><input type=hidden name=back value='{_e(back)}'>")
            actions = (f"<form class=act method=post action='/admin/act'>{hidden}"
                       "<button name=op value=allow>False positive &rarr; allow</button>"
                       "<button name=op value=deny>Confirm &rarr; deny</button>"
                       + ("<button name=op value=delete>Delete quarantined copy</button>" if key in present else "")
                       + "</form>")
        when = datetime.fromtimestamp(r["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        body_rows.append(
            f"<tr data-sha256='{_e(r['sha256'])}'><td>{_e(when)}</td><td>{_e(r['instance'])}</td><td>{_e(r['source'])}</td>"
            f"<td class='action-{_e(r['action'])}'>{_e(r['action'])}</td><td>{_e(r['decided_by'])}</td>"
            f"<td>{_e(', '.join(r['labels']) or '-')}</td><td class=hash title='{_e(r['sha256'])}'>{_e(r['sha256'][:12])}</td>"
            f"<td>{_e(r['detail'] or '')}</td><td>{preview}</td><td>{actions}</td></tr>")
    filters = (
        "<form class=filters method=get action='/admin/'>"
        + _select("action", q["action"], ["accept", "reject", "quarantine", "strip", "drop"])
        + f"<label>label<input name=label value='{_e(q['label'])}'></label>"
        + _select("source", q["source"], ["validate", "scan", "upload", "ingest", "inbox", "egress", "sweep"])
        + _select("instance", q["instance"], [i.name for i in services.config.instances])
        + f"<label>since (UTC)<input type=datetime-local name=since value='{_e(q['since'])}'></label>"
        + f"<label>until (UTC)<input type=datetime-local name=until value='{_e(q['until'])}'></label>"
        + "<button type=submit>Filter</button></form>")
    log_rows = "".join(
        f"<tr><td>{_e(datetime.fromtimestamp(m.ts, UTC).strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{_e(m.actor)}</td>"
        f"<td>{_e(m.action)}</td><td class=hash>{_e(m.sha256[:12])}</td><td>{_e(m.detail)}</td></tr>" for m in moderation)
    body = (
        "<header><h1>fedi-filter review</h1><form method=post action='/admin/logout'>"
        f"<input type=hidden name=csrf value='{csrf}'><button type=submit>Log out</button></form></header>"
        f"{notice}{filters}<p>Previews are blurred and grey; click one to reveal it (one at a time).</p>"
        "<table id=decisions><thead><tr><th>time (UTC)</th><th>instance</th><th>source</th><th>action</th><th>by</th>"
        "<th>labels</th><th>sha256</th><th>detail</th><th>preview</th><th>moderate</th></tr></thead>"
        f"<tbody>{''.join(body_rows) or '<tr><td colspan=10>No decisions match.</td></tr>'}</tbody></table>"
        "<h2>Moderator log</h2><table id=moderation><thead><tr><th>time (UTC)</th><th>who</th><th>action</th>"
        f"<th>sha256</th><th>detail</th></tr></thead><tbody>{log_rows}</tbody></table>")
    return _page("fedi-filter review", body)


async def media(request: web.Request) -> web.StreamResponse:
    """A quarantined copy, to a logged-in session only, raster images only."""
    services = request.app[SERVICES]
    if not services.config.server.admin_token or request.app[REVIEW].get(request) is None:
        return _secure(web.Response(status=401, text="log in first"))
    path = _quarantined(services, request.match_info["policy"], request.match_info["sha256"])
    if path is None:
        raise web.HTTPNotFound()
    try:
        data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
    except OSError:
        raise web.HTTPNotFound() from None
    mime = sniff(data)
    if mime not in PREVIEW_TYPES:
        return _secure(web.Response(status=415, text="no preview for this type"))
    resp = web.Response(body=data, content_type=mime)
    resp.headers["Content-Disposition"] = "inline"
    return _secure(resp)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return _secure(web.Response(body=_STATIC[name], content_type=_STATIC_TYPES[name]))


_BANK_PDQ = re.compile(r"^bank [^:]+: pdq:([0-9a-f]{64})")


async def _file_hashes(services: Services, policy: str, sha256: str) -> tuple[list[PdqHash], str]:
    """The PDQ hashes known for a file: from its quarantined copy when kept, else from the own bank; and
    the bank entries its refusals matched (a copy of a known file: allowing it allows what it matched)."""
    path = _quarantined(services, policy, sha256)
    loop = asyncio.get_running_loop()
    frames: list[PdqHash] = []
    sources: list[str] = []
    if path is not None:
        try:
            data = await loop.run_in_executor(None, path.read_bytes)
            frames += (await loop.run_in_executor(None, file_hashes, data))[2]
            sources.append("quarantined copy")
        except Exception as exc:  # gone or undecodable: the bank may still know its hashes
            log.info("no hashes from the quarantined copy of %s: %s", sha256[:12], exc)
    if not frames:
        frames += [PdqHash(e.value, e.quality or 100) for e in await services.banks.entries(OWN)
                   if e.sha256 == sha256 and e.kind == "pdq"]
        if frames:
            sources.append("own bank")
    store = services.store.store
    if store is not None:
        try:
            rows = await store.decisions(DecisionQuery(sha256=sha256, limit=20))
        except NotImplementedError:
            rows = []
        matched = {m.group(1) for r in rows if r["decided_by"] == "bank" and (m := _BANK_PDQ.match(r["detail"] or ""))}
        if matched:
            frames += [PdqHash(v, 100) for v in sorted(matched)]
            sources.append("the bank entries it matched")
    return frames, " and ".join(sources) or "sha256 only"


async def act(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.config.server.admin_token:
        return _disabled()
    session = request.app[REVIEW].get(request)
    form = await request.post()
    if session is None:
        return _page("fedi-filter review", "<p class=error>Log in first.</p>", 401)
    if not _csrf_ok(session, form):
        log.warning("review page: action without a valid CSRF token from %s", request.remote)
        return _page("fedi-filter review", "<p class=error>Refused: the form carried no valid CSRF token.</p>", 403)
    op, sha256, policy = str(form.get("op", "")), str(form.get("sha256", "")), str(form.get("policy", ""))
    if op not in ("allow", "deny", "delete") or not _SHA256.fullmatch(sha256) or policy not in services.config.policies:
        return _page("fedi-filter review", "<p class=error>Bad request.</p>", 400)
    banks = services.banks
    if op == "delete":
        path = _quarantined(services, policy, sha256)
        deleted = False
        if path is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, path.unlink)
                deleted = True
            except FileNotFoundError:
                pass
        detail = "quarantined copy deleted" if deleted else "no quarantined copy"
    else:
        frames, source = await _file_hashes(services, policy, sha256)
        bank, other = (ALLOW, DENY) if op == "allow" else (DENY, ALLOW)
        added = await banks.add(file_entries(bank, sha256, frames, (f"review:{op}",)))
        removed = await banks.remove(other, sha256=sha256)
        if op == "allow":
            removed += await banks.remove(OWN, sha256=sha256)
            for f in frames:
                removed += await banks.remove(OWN, kind="pdq", value=f.value)
        for name in services.config.policies:
            services.store.forget(sha256, name)
        detail = f"{added} hashes to the {bank} bank (PDQ from {source}), {removed} removed elsewhere"
    try:
        if services.store.store is None:
            raise NotImplementedError("no store")
        await services.store.store.record_moderation(ModerationRow(time.time(), session.actor, op, sha256, policy, detail))
    except NotImplementedError:
        log.warning("review page: this store keeps no moderation log; %s %s %s", session.actor, op, sha256)
    log.info("review page: %s %s %s (%s)", session.actor, op, sha256[:12], detail)
    back = str(form.get("back", ""))
    params = dict(urllib.parse.parse_qsl(back))
    params = {k: v for k, v in params.items() if k in FILTERS}
    params["done"] = f"{op}: {sha256[:12]}: {detail}"
    return _redirect("/admin/?" + urllib.parse.urlencode(params))


async def to_index(request: web.Request) -> web.StreamResponse:
    return _redirect("/admin/", 308)


def add_review_routes(app: web.Application) -> None:
    app[REVIEW] = ReviewState()
    app.router.add_get("/admin", to_index)
    app.router.add_get("/admin/", index)
    app.router.add_post("/admin/login", login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_post("/admin/act", act)
    app.router.add_get("/admin/media/{policy}/{sha256}", media)
    app.router.add_get("/admin/static/{name}", static)
