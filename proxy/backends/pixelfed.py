"""Pixelfed: the Mastodon client API, its own v1.1 / pixelfed/v1 API and the web UI's upload routes (compose,
avatar, stories, direct messages, Instagram import, admin custom emoji), inboxes. Refusals take Laravel's
validation error shape, which Pixelfed's clients read: ``422 {"message", "errors": {"file": [...]}}``."""

from collections.abc import Mapping
from typing import Any

from .base import INBOXES, BackendKind, upload


def laravel_error(message: str, code: str) -> Mapping[str, Any]:
    return {"message": message, "errors": {"file": [message]}}


KIND = BackendKind(
    name="pixelfed",
    refusal_status=422,
    error_body=laravel_error,
    routes=(
        upload("POST", r"/api/v[12]/media"),
        upload("PUT", r"/api/v1/media/[^/]+"),
        upload("POST", r"/api/v1/accounts/update_credentials"),
        upload("PATCH", r"/api/v1/accounts/update_credentials"),
        upload("POST", r"/api/(v1|pixelfed/v1)/avatar/update"),
        upload("POST", r"/api/(v1\.1|pixelfed/v1)/direct/thread/media"),
        upload("POST", r"/api/direct/media"),
        upload("POST", r"/api/(v1\.1|pixelfed/v1)/stories/add"),
        upload("POST", r"/api/web/stories/v1/add"),
        upload("POST", r"/api/compose/v0/media/upload"),
        upload("POST", r"/api/local/import/ig/media", multi=True),
        upload("POST", r"/settings/avatar"),
        upload("POST", r"/i/admin/custom-emoji/new"),
        *INBOXES,
    ),
    doc="Pixelfed: media, avatars, stories, direct messages, compose, Instagram import, custom emoji, inboxes",
)
