"""GoToSocial: the Mastodon client API's media, avatar/header and instance thumbnail uploads, admin custom
emoji, inboxes (routes of internal/api/client/{media,accounts,instance,admin}; errors are ``{"error"}``)."""

from .base import INBOXES, BackendKind, error_key, upload

KIND = BackendKind(
    name="gotosocial",
    refusal_status=422,
    error_body=error_key,
    routes=(
        upload("POST", r"/api/v[12]/media"),
        upload("PUT", r"/api/v[12]/media/[^/]+"),
        upload("PATCH", r"/api/v1/accounts/update_credentials"),
        upload("PATCH", r"/api/v1/instance"),
        upload("POST", r"/api/v1/admin/custom_emojis"),
        upload("PATCH", r"/api/v1/admin/custom_emojis/[^/]+"),
        *INBOXES,
    ),
    doc="GoToSocial: media, avatar and header, instance thumbnail, custom emoji, inboxes",
)
