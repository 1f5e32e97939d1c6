"""Verdict stores: the :class:`VerdictStore` seam, SQLite behind it, an in-memory cache in front."""

from .base import AuditRow, DeniedUrl, StoredVerdict, SweepMark, VerdictStore
from .memory import VerdictCache
from .sqlite import SqliteStore

__all__ = ["AuditRow", "DeniedUrl", "SqliteStore", "StoredVerdict", "SweepMark", "VerdictCache", "VerdictStore"]
