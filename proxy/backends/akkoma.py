"""Akkoma and Pleroma: the Mastodon client API, inboxes."""

from .base import INBOXES, BackendKind, error_key
from .mastodon import UPLOADS

KIND = BackendKind(
    name="akkoma",
    refusal_status=422,
    error_body=error_key,
    routes=(*UPLOADS, *INBOXES),
    doc="Akkoma/Pleroma: Mastodon client API uploads, inboxes",
)
