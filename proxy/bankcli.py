"""``fedi-filter hash`` and ``fedi-filter bank list|add|remove|import|export``.

``hash`` prints the lines a bank or an allow/deny list takes (``sha256:…``, ``md5:…``, ``pdq:…``), one PDQ
per distinct frame, computed as the pipeline computes them (from the decoded frames). ``bank`` works on the
store named by ``server.audit_db``; a running server picks the change up within a second.
Import and export speak hasher-matcher-actioner's CSV (:mod:`proxy.banks`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from .banks import BankRole, Banks, export_hma, file_entries, hma_file_name, import_hma, kind_of_hma_file
from .config import ConfigError, MediaLimits, load_config
from .hashing import HASH_KINDS, PdqHash, parse_hash, pdq_frames
from .media import MediaError, decode
from .stores import BankEntry, ModerationRow, SqliteStore


def file_hashes(data: bytes, limits: MediaLimits | None = None) -> tuple[str, str, tuple[PdqHash, ...]]:
    """sha256, md5 and the PDQ of every whole frame of a media file (blocks; raises MediaError)."""
    decoded = decode(data, limits or MediaLimits())
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest(), \
        pdq_frames(decoded.frames, decoded.views)


def cmd_hash(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        try:
            sha256, md5, frames = file_hashes(Path(name).read_bytes())
        except (OSError, MediaError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"sha256:{sha256}  {name}")
        print(f"md5:{md5}  {name}")
        for f in frames:
            note = "" if f.usable else f"  (quality {f.quality}: below 50, never matched)"
            print(f"pdq:{f.value}  {name}  quality={f.quality}{note}")
    return 1 if failed else 0


def _items(bank: str, items: list[str], labels: tuple[str, ...]) -> list[BankEntry]:
    """Bank entries from ``kind:value`` arguments and media files (hashed as ``hash`` does)."""
    out: list[BankEntry] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            sha256, md5, frames = file_hashes(path.read_bytes())
            out += file_entries(bank, sha256, frames, labels, md5=md5)
            continue
        kind, value = parse_hash(item)
        out.append(BankEntry(bank, kind, value, labels=labels))
    return out


async def _with_banks(config_path: str | None, work: Callable[[Banks], Awaitable[int]]) -> int:
    config = load_config(config_path)
    if not config.server.audit_db:
        raise ConfigError("server.audit_db", "banks live in the store: set server.audit_db")
    store = SqliteStore(config.server.audit_db)
    await store.open()
    banks = Banks(store)
    try:
        await banks.open()
        return await work(banks)
    finally:
        await store.close()


async def _audit(banks: Banks, action: str, detail: str) -> None:
    """Bank changes from the command line go to the moderation log beside the review page's."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        user = "unknown"
    if banks.store is not None:
        await banks.store.record_moderation(ModerationRow(time.time(), f"cli:{user}", action, "", "", detail))


def cmd_bank(args: argparse.Namespace) -> int:
    try:
        return _bank(args)
    except (ValueError, KeyError, MediaError, OSError) as exc:
        print(f"bank {args.bank_command}: {exc}", file=sys.stderr)
        return 2


def _bank(args: argparse.Namespace) -> int:
    op = args.bank_command
    if op == "list":
        async def work(banks: Banks) -> int:
            if args.bank is None:
                for info in await banks.infos():
                    print(f"{info.name}\t{info.role}\t{info.entries} entries")
                return 0
            if args.bank not in banks.roles:
                raise KeyError(f"no bank named {args.bank!r}")
            for e in await banks.entries(args.bank):
                print(f"{e.kind}:{e.value}\t{' '.join(e.labels) or '-'}\t{e.sha256 or '-'}")
            return 0
    elif op == "add":
        entries = _items(args.bank, args.items, tuple(args.label))

        async def work(banks: Banks) -> int:
            if args.bank not in banks.roles:
                await banks.create(args.bank, BankRole(args.role))
            added = await banks.add(entries)
            print(f"{args.bank}: {added} added, {len(entries) - added} already there")
            await _audit(banks, "bank add", f"{args.bank}: {added} added")
            return 0
    elif op == "remove":
        entries = _items(args.bank, args.items, ())

        async def work(banks: Banks) -> int:
            if args.bank not in banks.roles:
                raise KeyError(f"no bank named {args.bank!r}")
            if not entries:
                n = await banks.drop(args.bank)
                print(f"{args.bank}: removed with its {n} entries")
                await _audit(banks, "bank remove", f"{args.bank}: removed with its {n} entries")
                return 0
            n = sum([await banks.remove(args.bank, kind=e.kind, value=e.value) for e in entries])
            print(f"{args.bank}: {n} removed")
            await _audit(banks, "bank remove", f"{args.bank}: {n} removed")
            return 0
    elif op == "import":
        batches: list[tuple[str, list[BankEntry]]] = []
        for name in args.files:
            kind = args.kind or kind_of_hma_file(name)
            if kind is None:
                raise ValueError(f"{name}: name the hash kind with --kind, or name the file <bank>.hash_pdq.te "
                                 "(hash_md5, hash_sha256) as HMA does")
            bank = args.bank or Path(name).name.split(".")[0]
            try:
                batches.append((bank, import_hma(Path(name).read_text(), bank, kind)))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None

        async def work(banks: Banks) -> int:
            for bank, found in batches:
                if bank not in banks.roles:
                    await banks.create(bank, BankRole(args.role))
                added = await banks.add(found)
                print(f"{bank}: {added} of {len(found)} imported")
                await _audit(banks, "bank import", f"{bank}: {added} of {len(found)} imported")
            return 0
    elif op == "export":
        async def work(banks: Banks) -> int:
            if args.bank not in banks.roles:
                raise KeyError(f"no bank named {args.bank!r}")
            entries = await banks.entries(args.bank)
            if args.out is None:
                sys.stdout.write(export_hma(entries, args.kind or "pdq"))
                return 0
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            kinds = [args.kind] if args.kind else sorted({e.kind for e in entries})
            for kind in kinds:
                path = out / hma_file_name(args.bank, kind)
                path.write_text(export_hma(entries, kind))
                print(path)
            return 0
    else:  # pragma: no cover - argparse refuses other commands
        raise ValueError(op)
    return asyncio.run(_with_banks(args.config, work))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hash", help="print sha256:, md5: and pdq: lines of media files (for banks and lists)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("bank", help="hash banks: list, add, remove, import, export (HMA CSV)")
    p.add_argument("--config", help="config file (default: $FEDI_FILTER_CONFIG); banks live in server.audit_db")
    ops = p.add_subparsers(dest="bank_command", required=True)
    roles = [str(r) for r in BankRole]
    kinds = sorted(HASH_KINDS)

    o = ops.add_parser("list", help="banks with role and size, or the entries of one bank")
    o.add_argument("bank", nargs="?")
    o = ops.add_parser("add", help="add kind:value hashes or media files (hashed) to a bank, creating it")
    o.add_argument("bank")
    o.add_argument("items", nargs="+", metavar="HASH_OR_FILE")
    o.add_argument("--role", choices=roles, default=str(BankRole.KNOWN),
                   help="a new bank's role: deny (final), allow (beats known banks and the classifier), known "
                        "(refuses unless allowed; default)")
    o.add_argument("--label", action="append", default=[], help="a label (tag) for the entries; repeatable")
    o = ops.add_parser("remove", help="remove hashes or files' hashes from a bank; with none, remove the bank")
    o.add_argument("bank")
    o.add_argument("items", nargs="*", metavar="HASH_OR_FILE")
    o = ops.add_parser("import", help="import hasher-matcher-actioner CSV files (hash,indicator_id,descriptor_id,"
                                      "timestamp,tags)")
    o.add_argument("files", nargs="+", metavar="FILE")
    o.add_argument("--bank", help="into this bank (default: the file name up to its first dot, HMA's privacy group)")
    o.add_argument("--kind", choices=kinds, help="hash kind of the files (default: from *.hash_pdq.te etc.)")
    o.add_argument("--role", choices=roles, default=str(BankRole.KNOWN), help="role of a bank this creates")
    o = ops.add_parser("export", help="export a bank as hasher-matcher-actioner CSV")
    o.add_argument("bank")
    o.add_argument("--kind", choices=kinds, help="one kind only (stdout: default pdq)")
    o.add_argument("--out", metavar="DIR", help="write <bank>.hash_<kind>.te files here, one per kind")
    p.set_defaults(func=cmd_bank)

