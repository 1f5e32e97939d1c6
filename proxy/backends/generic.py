"""Any other ActivityPub server: inboxes only, Mastodon's error shape."""

from .base import INBOXES, BackendKind, error_key

KIND = BackendKind(
    name="generic",
    refusal_status=422,
    error_body=error_key,
    routes=INBOXES,
    doc="any ActivityPub server: inboxes",
)
