"""Verdict stores: the :class:`VerdictStore` seam, SQLite (default) or PostgreSQL (replicas) behind it, an
in-memory cache in front. :mod:`proxy.stores.postgres` is imported only when a config names one."""

from .banks import BankEntry, BankInfo, DecisionQuery, ModerationRow
from .base import EVERY_POLICY, AuditRow, DeniedUrl, StoredVerdict, SweepMark, VerdictStore
from .memory import VerdictCache
from .sqlite import SqliteStore

__all__ = ["EVERY_POLICY", "AuditRow", "BankEntry", "BankInfo", "DecisionQuery", "DeniedUrl", "ModerationRow",
           "SqliteStore", "StoredVerdict", "SweepMark", "VerdictCache", "VerdictStore"]
