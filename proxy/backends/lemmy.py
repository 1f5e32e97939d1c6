"""Lemmy 0.19 (API v3, uploads through /pictrs/image) and 1.0 (API v4), and their inboxes."""

from collections.abc import Mapping
from typing import Any

from .base import INBOXES, BackendKind, ingest, msg_code_error, upload


def lemmy_error(message: str, code: str) -> Mapping[str, Any]:
    """Lemmy's API error: ``{"error": <snake_case>, "message": ...}`` (lemmy-js-client reads both)."""
    return {"error": code.replace("-", "_"), "message": message}


KIND = BackendKind(
    name="lemmy",
    refusal_status=400,
    error_body=lemmy_error,
    routes=(
        upload("POST", r"/pictrs/image", multi=True, error_body=msg_code_error),  # pict-rs's answer, passed through
        upload("POST", r"/api/v4/image"),
        upload("POST", r"/api/v4/(account/(avatar|banner)|community/(icon|banner)|site/(icon|banner))"),
        ingest("GET", r"/api/v3/image_proxy", param="url"),
        ingest("GET", r"/api/v4/image/proxy", param="url"),
        *INBOXES,
    ),
    doc="Lemmy: uploads (0.19 /pictrs/image, 1.0 /api/v4/image and icons), image proxy, inboxes",
)
