"""Mastodon: media, avatars and headers (also as data: URIs), emoji and branding uploads, inboxes."""

from .base import INBOXES, BackendKind, Route, error_key, upload

UPLOADS: tuple[Route, ...] = (
    upload("POST", r"/api/v[12]/media"),
    upload("PUT", r"/api/v1/media/[^/]+"),
    upload("PATCH", r"/api/v1/media/[^/]+"),
    upload("PATCH", r"/api/v1/accounts/update_credentials"),
    upload("PATCH", r"/api/v1/profile"),
    upload("PUT", r"/api/v1/profile"),
    upload("PATCH", r"/settings/profile"),
    upload("POST", r"/admin/custom_emojis"),
    upload("PATCH", r"/admin/settings(/[a-z_]+)?"),
)

KIND = BackendKind(
    name="mastodon",
    refusal_status=422,
    error_body=error_key,
    routes=(*UPLOADS, *INBOXES),
    doc="Mastodon: media, avatars and headers, custom emoji, branding, inboxes",
)
