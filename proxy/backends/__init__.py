"""One :class:`BackendKind` record per server kind; :data:`KINDS` is what ``instances[].kind`` accepts."""

from collections.abc import Mapping

from . import akkoma, generic, gotosocial, lemmy, mastodon, misskey, pictrs, pixelfed
from .base import INBOX_PATHS, BackendKind, Interception, Route

KINDS: Mapping[str, BackendKind] = {m.KIND.name: m.KIND for m in (lemmy, pictrs, mastodon, misskey, akkoma, gotosocial,
                                                                  pixelfed, generic)}

__all__ = ["INBOX_PATHS", "KINDS", "BackendKind", "Interception", "Route"]
