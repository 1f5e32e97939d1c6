"""Mastodon: media uploads, avatars and headers, inboxes."""

from .base import INBOXES, BackendKind, Route, error_key, upload

UPLOADS: tuple[Route, ...] = (
    upload("POST", r"/api/v1/media", ("file", "thumbnail")),
    upload("POST", r"/api/v2/media", ("file", "thumbnail")),
    upload("PUT", r"/api/v1/media/[^/]+", ("file", "thumbnail")),
    upload("PATCH", r"/api/v1/accounts/update_credentials", ("avatar", "header")),
)

KIND = BackendKind(
    name="mastodon",
    refusal_status=422,
    error_body=error_key,
    routes=(*UPLOADS, *INBOXES),
    doc="Mastodon: media, avatars and headers, inboxes",
)
