"""Lemmy: its API, its pict-rs routes (/pictrs/image) and its inboxes."""

from .base import INBOXES, BackendKind, ingest, msg_code_error, upload

KIND = BackendKind(
    name="lemmy",
    refusal_status=400,
    error_body=msg_code_error,
    routes=(
        upload("POST", r"/pictrs/image", ("images[]",), multi=True),
        ingest("GET", r"/api/v3/image_proxy", param="url"),
        *INBOXES,
    ),
    doc="Lemmy: uploads through /pictrs/image, image_proxy, inboxes",
)
