"""Hash banks: named sets of hashes (sha256, md5, PDQ) kept in the store, matched in memory.

A bank has a role, which sets where it stands in the pipeline's precedence (highest first):

1. the policy's ``deny`` list and banks of role ``deny``: refused, final;
2. the policy's ``allow`` list and banks of role ``allow``: accepted (how a false positive is fixed for good);
3. banks of role ``known`` (the instance's ``own`` bank, lists shared by others): refused unless allowed;
4. the classifier.

Three banks always exist: ``own`` (known; every file a classifier label refused is added to it as sha256
and PDQ, hashes only, never media), ``allow`` and ``deny`` (what moderators decide on the review page).
Admins add more (``fedi-filter bank import``). Exact kinds are matched on the request's bytes; PDQ on the
decoded frames within the policy's ``pdq_distance``, only for hashes of quality >= 50.

:class:`Banks` holds an immutable :class:`BankIndex` built from the store and swaps in a new one when the
store's bank version changes (checked at most once a second, on demand), so the CLI or another process
can change banks under a running server.

Import and export use the CSV files of ThreatExchange's hasher-matcher-actioner (HMA 1.0,
``hmalib/common/s3_adapters.py``, ``ThreatExchangeS3PDQAdapter``): no header, the columns
``hash,indicator_id,descriptor_id,timestamp,tags`` (tags separated by spaces), one file per signal type
named ``<privacy group>.<indicator type>.te`` (``own.hash_pdq.te``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from .hashing import HASH_KINDS, PDQ_DISTANCE, PdqHash, PdqIndex
from .stores.banks import BankEntry, BankInfo, BankStore

log = logging.getLogger(__name__)


class BankRole(StrEnum):
    DENY = "deny"
    ALLOW = "allow"
    KNOWN = "known"

    @property
    def refuses(self) -> bool:
        return self is not BankRole.ALLOW


OWN, ALLOW, DENY = "own", "allow", "deny"
DEFAULT_BANKS: Mapping[str, BankRole] = {OWN: BankRole.KNOWN, ALLOW: BankRole.ALLOW, DENY: BankRole.DENY}
OWN_PDQ_PER_FILE = 64
"""At most this many frame hashes of one refused file go to the own bank (a long video has many)."""
RELOAD_CHECK_S = 1.0


@dataclass(frozen=True)
class BankHit:
    bank: str
    role: BankRole
    entry: str
    """``kind:value`` of the bank's entry."""
    labels: tuple[str, ...] = ()
    distance: int | None = None

    @property
    def detail(self) -> str:
        near = f" (distance {self.distance})" if self.distance is not None else ""
        return f"bank {self.bank}: {self.entry}{near}"


@dataclass
class _RoleIndex:
    exact: dict[tuple[str, str], BankEntry] = field(default_factory=dict)
    pdq: PdqIndex = field(default_factory=lambda: PdqIndex(()))
    pdq_entries: list[BankEntry] = field(default_factory=list)


class BankIndex:
    """An immutable snapshot of every bank, by role, for matching."""

    def __init__(self, entries: Iterable[BankEntry], roles: Mapping[str, BankRole]) -> None:
        by_role = {role: _RoleIndex() for role in BankRole}
        pdq: dict[BankRole, list[BankEntry]] = {role: [] for role in BankRole}
        kinds: set[str] = set()
        for e in entries:
            role = roles.get(e.bank)
            if role is None:
                continue
            if HASH_KINDS[e.kind].exact:
                by_role[role].exact.setdefault((e.kind, e.value), e)
                kinds.add(e.kind)
            elif e.quality is None or e.quality >= 50:
                pdq[role].append(e)
        for role, found in pdq.items():
            by_role[role].pdq = PdqIndex([e.value for e in found])
            by_role[role].pdq_entries = found
        self._roles = by_role
        self.exact_kinds = frozenset(kinds)
        self.size = sum(len(r.exact) + len(r.pdq_entries) for r in by_role.values())

    def match_exact(self, role: BankRole, digests: Mapping[str, str]) -> BankHit | None:
        index = self._roles[role]
        for kind, digest in digests.items():
            e = index.exact.get((kind, digest))
            if e is not None:
                return BankHit(e.bank, role, f"{kind}:{digest}", e.labels)
        return None

    def match_pdq(self, role: BankRole, frames: Sequence[PdqHash], max_distance: int = PDQ_DISTANCE) -> BankHit | None:
        index = self._roles[role]
        found = index.pdq.nearest(frames, max_distance)
        if found is None:
            return None
        e = index.pdq_entries[found.index]
        return BankHit(e.bank, role, f"pdq:{e.value}", e.labels, found.distance)

    def allow_signature(self) -> frozenset[tuple[str, str]]:
        index = self._roles[BankRole.ALLOW]
        return frozenset(index.exact) | frozenset(("pdq", e.value) for e in index.pdq_entries)


class Banks:
    """The banks of one store, matched in memory; ``store`` None keeps them in memory only (one-shot commands)."""

    def __init__(self, store: BankStore | None, *, on_allow_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_allow_change = on_allow_change
        self.persistent = store is not None
        self.index = BankIndex((), DEFAULT_BANKS)
        self.roles: dict[str, BankRole] = dict(DEFAULT_BANKS)
        self._memory: list[BankEntry] = []
        self._entries: list[BankEntry] = []
        """Every entry the index was built from (so an addition extends it without reading the store)."""
        self._version: int | None = None
        self._checked = 0.0
        self._reloading = asyncio.Lock()

    async def open(self) -> None:
        """Create the default banks and load every bank."""
        if self.store is not None:
            try:
                for name, role in DEFAULT_BANKS.items():
                    await self.store.create_bank(name, role)
            except NotImplementedError as exc:
                log.warning("%s: hash banks are kept in memory only", exc)
                self.store = None
                self.persistent = False
        await self.reload()

    @property
    def exact_kinds(self) -> frozenset[str]:
        return self.index.exact_kinds

    async def reload(self) -> None:
        async with self._reloading:  # one at a time: an older snapshot never replaces a newer one
            await self._reload()

    async def _reload(self) -> None:
        if self.store is None:
            entries, roles = list(self._memory), dict(self.roles)
        else:
            self._version = await self.store.banks_version()
            infos = await self.store.banks()
            roles = {b.name: BankRole(b.role) for b in infos}
            entries = await self.store.bank_entries()
        before = self.index.allow_signature()
        index = await asyncio.to_thread(BankIndex, entries, roles)  # 100,000 entries: ~150 ms, beside the loop
        self.roles, self.index, self._entries = roles, index, list(entries)
        self._checked = time.monotonic()
        if self.index.allow_signature() != before and self.on_allow_change is not None:
            self.on_allow_change()

    async def maybe_reload(self) -> None:
        """Reload when another process changed the banks (asked of the store at most once a second)."""
        if self.store is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return
        self._checked = time.monotonic()
        try:
            version = await self.store.banks_version()
        except Exception as exc:  # the store is gone (closing): keep matching with what we have
            log.warning("cannot check hash banks: %s", exc)
            return
        if version != self._version:
            await self.reload()

    async def infos(self) -> list[BankInfo]:
        if self.store is not None:
            return await self.store.banks()
        counts: dict[str, int] = {}
        for e in self._memory:
            counts[e.bank] = counts.get(e.bank, 0) + 1
        return [BankInfo(n, str(r), 0.0, counts.get(n, 0)) for n, r in sorted(self.roles.items())]

    async def create(self, name: str, role: BankRole) -> bool:
        if self.store is not None:
            created = await self.store.create_bank(name, role)
        else:
            created = name not in self.roles
            self.roles.setdefault(name, role)
        await self.reload()
        return created

    async def add(self, entries: list[BankEntry]) -> int:
        """Add entries to their banks (which must exist); how many were new."""
        for e in entries:
            if e.bank not in self.roles:
                raise KeyError(f"no bank named {e.bank!r}; known: {sorted(self.roles)}")
        if self.store is not None:
            added = await self.store.add_bank_entries(entries)
        else:
            seen = {(e.bank, e.kind, e.value) for e in self._memory}
            new = [e for e in entries if (e.bank, e.kind, e.value) not in seen]
            self._memory += new
            added = len(new)
        if added:
            await self._extend(entries)
        return added

    async def _extend(self, entries: list[BankEntry]) -> None:
        """Add our own new entries to the index without reading every bank back from the store (a refusal
        must not cost a full reload as the own bank grows)."""
        async with self._reloading:
            known = {(e.bank, e.kind, e.value) for e in self._entries}
            new = [e for e in entries if (e.bank, e.kind, e.value) not in known]
            before = self.index.allow_signature()
            grown = self._entries + new
            self.index = await asyncio.to_thread(BankIndex, grown, self.roles)
            self._entries = grown
            if self.store is not None:
                self._version = await self.store.banks_version()  # our own write: nothing to reload for it
            if self.index.allow_signature() != before and self.on_allow_change is not None:
                self.on_allow_change()

    async def remove(self, bank: str, *, kind: str | None = None, value: str | None = None, sha256: str | None = None) -> int:
        if self.store is not None:
            removed = await self.store.remove_bank_entries(bank, kind=kind, value=value, sha256=sha256)
        else:
            def gone(e: BankEntry) -> bool:
                return e.bank == bank and all(w is None or getattr(e, k) == w for k, w in
                                              (("kind", kind), ("value", value), ("sha256", sha256)))
            removed = sum(gone(e) for e in self._memory)
            self._memory = [e for e in self._memory if not gone(e)]
        if removed:
            await self.reload()
        return removed

    async def drop(self, bank: str) -> int:
        if bank in DEFAULT_BANKS:
            raise ValueError(f"the {bank!r} bank cannot be removed (remove its entries instead)")
        if self.store is not None:
            n = await self.store.drop_bank(bank)
        else:
            n = await self.remove(bank)
            self.roles.pop(bank, None)
        await self.reload()
        return n

    async def entries(self, bank: str | None = None) -> list[BankEntry]:
        if self.store is not None:
            return await self.store.bank_entries(bank)
        return [e for e in self._memory if bank is None or e.bank == bank]

    async def learn(self, sha256: str, frames: Sequence[PdqHash], labels: Sequence[str]) -> int:
        """A classifier label refused this file: remember it in the own bank (sha256 and PDQ, no media)."""
        return await self.add(file_entries(OWN, sha256, frames, labels))


def file_entries(bank: str, sha256: str, frames: Sequence[PdqHash], labels: Sequence[str] = (), *,
                 md5: str | None = None) -> list[BankEntry]:
    """A file's bank entries: its sha256 (and md5), and the PDQ of its frames of usable quality."""
    now = time.time()
    out = [BankEntry(bank, "sha256", sha256, sha256=sha256, labels=tuple(labels), ts=now)]
    if md5:
        out.append(BankEntry(bank, "md5", md5, sha256=sha256, labels=tuple(labels), ts=now))
    usable = sorted((f for f in frames if f.usable), key=lambda f: -f.quality)[:OWN_PDQ_PER_FILE]
    out += [BankEntry(bank, "pdq", f.value, quality=f.quality, sha256=sha256, labels=tuple(labels), ts=now) for f in usable]
    return out


# --- HMA CSV ----------------------------------------------------------------------------------------

HMA_COLUMNS = ("hash", "indicator_id", "descriptor_id", "timestamp", "tags")
"""hasher-matcher-actioner 1.0, ``hmalib/common/s3_adapters.py``: ``indicator_type_file_columns``."""
HMA_TYPES: Mapping[str, str] = {"pdq": "hash_pdq", "md5": "hash_md5", "sha256": "hash_sha256"}
"""Our hash kinds and ThreatExchange's indicator types (lower case, as in HMA's file names)."""
_HMA_TIME = "%Y-%m-%dT%H:%M:%S%z"


def hma_file_name(bank: str, kind: str) -> str:
    """``<privacy group>.<indicator type>.te``, as HMA names the files of one signal type."""
    return f"{bank}.{HMA_TYPES[kind]}.te"


def kind_of_hma_file(name: str) -> str | None:
    """The hash kind a file name says (``*.hash_pdq.te``, ``*.hash_md5.te``, ``*.hash_sha256.te``), or None."""
    lowered = name.lower()
    for kind, indicator in HMA_TYPES.items():
        if lowered.endswith(f".{indicator}.te") or lowered.endswith(f".{indicator}.csv"):
            return kind
    return None


def export_hma(entries: Iterable[BankEntry], kind: str) -> str:
    """One HMA CSV of the entries of ``kind`` (ids kept from an import, else our entry id)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for e in entries:
        if e.kind != kind:
            continue
        ident = str(e.id) if e.id is not None else ""
        stamp = datetime.fromtimestamp(e.ts, UTC).strftime(_HMA_TIME)
        writer.writerow([e.value, e.indicator_id or ident, e.descriptor_id or ident, stamp, " ".join(e.labels)])
    return buf.getvalue()


def import_hma(text: str, bank: str, kind: str) -> list[BankEntry]:
    """Entries from one HMA CSV of ``kind``; a bad row raises ValueError naming its line."""
    hash_kind = HASH_KINDS[kind]
    out = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not row[0].strip():
            continue
        if len(row) != len(HMA_COLUMNS):
            raise ValueError(f"line {lineno}: expected {len(HMA_COLUMNS)} columns ({','.join(HMA_COLUMNS)}), got {len(row)}")
        value, indicator_id, descriptor_id, stamp, tags = row
        try:
            parsed = hash_kind.parse(value)
            ts = datetime.strptime(stamp, _HMA_TIME).timestamp() if stamp else time.time()
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
        out.append(BankEntry(bank, kind, parsed, labels=tuple(tags.split()), ts=ts, indicator_id=indicator_id or None,
                             descriptor_id=descriptor_id or None))
    return out
