"""pict-rs (Lemmy's image store), reached directly."""

from .base import BackendKind, ingest, msg_code_error, upload

UPLOADS = (
    upload("POST", r"/image", multi=True),
    upload("POST", r"/image/backgrounded", multi=True),
    upload("POST", r"/internal/import", multi=True),
)
INGEST = (
    ingest("GET", r"/image/download", param="url"),
    ingest("GET", r"/image/original", param="proxy"),
    ingest("GET", r"/image/blurhash", param="proxy"),
    ingest("GET", r"/image/process\.[a-z0-9]+", param="proxy"),
    ingest("GET", r"/image/details/original", param="proxy"),
    ingest("GET", r"/image/details/process\.[a-z0-9]+", param="proxy"),
    ingest("GET", r"/image/process_backgrounded\.[a-z0-9]+", param="proxy"),
)

KIND = BackendKind(
    name="pictrs",
    refusal_status=400,
    error_body=msg_code_error,
    routes=(*UPLOADS, *INGEST),
    doc="pict-rs: uploads, URL ingestion (download, proxy); its external_validation calls /api/v1/validate",
)
