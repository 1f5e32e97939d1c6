"""Akkoma and Pleroma: the Mastodon client API, mascot and emoji packs, inboxes."""

from .base import INBOXES, BackendKind, error_key, ingest, upload
from .mastodon import UPLOADS

KIND = BackendKind(
    name="akkoma",
    refusal_status=422,
    error_body=error_key,
    routes=(
        *UPLOADS,
        upload("PUT", r"/api/v1/pleroma/mascot"),
        upload("POST", r"/api/v1/pleroma/emoji/packs/files"),
        upload("PATCH", r"/api/v1/pleroma/emoji/packs/files"),
        ingest("POST", r"/api/v1/pleroma/emoji/packs/download", json_key="url"),
        *INBOXES,
    ),
    doc="Akkoma/Pleroma: Mastodon client API uploads, mascot, emoji packs, inboxes",
)
