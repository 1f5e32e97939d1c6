"""Misskey (and Firefish, Sharkey, Iceshrimp): drive uploads, their Mastodon-compatible API, upload-from-url,
inboxes. Misskey serves its API endpoints on every method but GET."""

from collections.abc import Mapping
from typing import Any

from .base import INBOXES, BackendKind, ingest, upload

ERROR_IDS = {
    "media-refused": "6f6c0ae6-2b5c-4a1c-9d2e-8f1c6a7e5b10",
    "media-unavailable": "0d1a3c5e-7b9d-4f2a-8c6e-1b3d5f7a9c20",
}


def misskey_error(message: str, code: str) -> Mapping[str, Any]:
    """Misskey's API error object; the id is fixed per error so clients can match it."""
    return {"error": {"message": message, "code": code.upper().replace("-", "_"),
                      "id": ERROR_IDS.get(code, ERROR_IDS["media-refused"]), "kind": "client"}}


KIND = BackendKind(
    name="misskey",
    refusal_status=400,
    error_body=misskey_error,
    routes=(
        upload("POST", r"/api/drive/files/create"),
        upload("POST", r"/api/v[12]/media"),  # Sharkey, Iceshrimp: the Mastodon API beside Misskey's
        upload("PATCH", r"/api/v1/accounts/update_credentials"),
        upload("POST", r"/api/iceshrimp/(drive|emoji(/import)?)"),
        ingest("POST", r"/api/drive/files/upload-from-url", json_key="url"),
        *INBOXES,
    ),
    doc="Misskey, Firefish, Sharkey: drive uploads, upload-from-url, inboxes",
    codes=ERROR_IDS,
    any_method=True,
)
