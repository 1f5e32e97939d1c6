"""Hash banks and PDQ lists end to end: real photos, re-encoded and resized, through the real validation
API; the own bank filled by classifier refusals only; precedence; HMA CSV; the CLI as a subprocess.

The flag path uses the benign stand-in only: NudeNet's real weights flag photos of faces
(tests/support/configs.FACES)."""

from __future__ import annotations

import asyncio
import copy
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import proxy.banks
from proxy.bankcli import file_hashes
from proxy.banks import ALLOW, OWN, BankIndex, BankRole, Banks, export_hma, file_entries, import_hma, kind_of_hma_file
from proxy.hashing import PdqHash
from proxy.stores import BankEntry, SqliteStore
from proxy.verdict import DecidedBy
from tests.support.configs import ALWAYS, FACES, make_config, policy
from tests.support.media import variant
from tests.support.photos import photo
from tests.support.servers import Client, post_media, services, start

ROOT = Path(__file__).resolve().parent.parent



def pdq(data: bytes) -> str:
    frames = file_hashes(data)[2]
    assert len(frames) == 1 and frames[0].usable
    return frames[0].value


def no_classifier(**overrides: Any) -> dict[str, Any]:
    """A policy without concepts: only lists and banks can refuse anything."""
    return dict(overrides)


def faces(**overrides: Any) -> dict[str, Any]:
    pol = copy.deepcopy(FACES)
    pol.update(overrides)
    return pol


# --- PDQ lists -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["inline", "file"])
async def test_resized_reencoded_copy_of_a_denied_photo_is_refused_without_a_classifier(
        aiohttp_client: Client, tmp_path: Path, where: str) -> None:
    entry = f"pdq:{pdq(photo('rocket'))}"
    if where == "file":
        listing = tmp_path / "deny.txt"
        listing.write_text(f"# shared by a friendly instance\n{entry}\n")
        deny: dict[str, Any] = {"files": [str(listing)]}
    else:
        deny = {"hashes": [entry]}
    config = await asyncio.to_thread(make_config, no_classifier(deny=deny))  # reads the list file, as at start-up
    client = await start(aiohttp_client, config)
    copy_ = variant("rocket")
    assert copy_ != photo("rocket")
    status, body = await post_media(client, copy_)
    assert status == 406
    assert body["decided_by"] == "denylist" and body["detail"].startswith(entry)
    for other in ("coffee", "chelsea", "astronaut", "china", "grace_hopper", "camera"):
        status, body = await post_media(client, variant(other))
        assert status == 200 and body["decided_by"] == "no_rules", other


async def test_pdq_distance_is_the_policys(aiohttp_client: Client) -> None:
    original, copy_ = pdq(photo("chelsea")), pdq(variant("chelsea"))
    distance = (int(original, 16) ^ int(copy_, 16)).bit_count()
    assert 0 < distance <= 31
    strict = await start(aiohttp_client, make_config(no_classifier(deny={"hashes": [f"pdq:{original}"]},
                                                                   pdq_distance=distance - 1)))
    assert (await post_media(strict, variant("chelsea")))[0] == 200
    exact = await start(aiohttp_client, make_config(no_classifier(deny={"hashes": [f"pdq:{original}"]},
                                                                  pdq_distance=distance)))
    assert (await post_media(exact, variant("chelsea")))[0] == 406


async def test_low_quality_hashes_never_match(aiohttp_client: Client) -> None:
    """A flat picture's PDQ has quality 0: listed or not, it matches nothing (not even itself)."""
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (120, 120, 120)).save(buf, "PNG")
    flat = buf.getvalue()
    frames = file_hashes(flat)[2]
    assert frames and not frames[0].usable
    client = await start(aiohttp_client, make_config(no_classifier(deny={"hashes": [f"pdq:{frames[0].value}"]})))
    status, body = await post_media(client, flat)
    assert status == 200 and body["decided_by"] == "no_rules"


async def test_allowed_false_positive_passes_after_reencoding_and_resizing(aiohttp_client: Client) -> None:
    plain = await start(aiohttp_client, make_config(faces()))
    status, body = await post_media(plain, variant("astronaut"))
    assert status == 406 and body["decided_by"] == "model" and body["labels"] == ["portrait"]

    fixed = await start(aiohttp_client, make_config(faces(allow={"hashes": [f"pdq:{pdq(photo('astronaut'))}"]})))
    status, body = await post_media(fixed, variant("astronaut"))
    assert status == 200 and body["decided_by"] == "allowlist"
    status, body = await post_media(fixed, variant("grace_hopper"))  # another face: still the model's to judge
    assert status == 406 and body["decided_by"] == "model"


async def test_deny_beats_allow(aiohttp_client: Client) -> None:
    entry = f"pdq:{pdq(photo('coffee'))}"
    client = await start(aiohttp_client, make_config(no_classifier(deny={"hashes": [entry]}, allow={"hashes": [entry]})))
    status, body = await post_media(client, variant("coffee"))
    assert status == 406 and body["decided_by"] == "denylist"


# --- the own bank ----------------------------------------------------------------------------------


async def test_own_bank_learns_a_model_refusal_and_refuses_copies(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(faces()))
    banks = services(client).banks
    status, body = await post_media(client, photo("astronaut"))
    assert status == 406 and body["decided_by"] == "model"
    own = await banks.entries(OWN)
    assert {e.kind for e in own} == {"sha256", "pdq"}
    assert {e.sha256 for e in own} == {body["sha256"]} and all(e.labels == ("portrait",) for e in own)

    status, body = await post_media(client, variant("astronaut"))
    assert status == 406 and body["decided_by"] == "bank" and body["labels"] == ["portrait"]
    assert body["detail"].startswith("bank own: pdq:")
    assert len(await banks.entries(OWN)) == len(own)  # a bank hit is not learned again

    status, body = await post_media(client, photo("coffee"))
    assert status == 200 and body["decided_by"] == "model"
    assert len(await banks.entries(OWN)) == len(own)


async def test_own_bank_learns_only_the_refused_frames_of_an_animation(aiohttp_client: Client) -> None:
    """An animation with one flagged frame among clean ones: only the flagged picture is learned, so the
    clean pictures (here the same photos, posted alone) are not refused by the bank later."""
    from tests.support.media import animated_gif

    client = await start(aiohttp_client, make_config(faces()))
    status, body = await post_media(client, animated_gif(["chelsea", "astronaut", "rocket"]))
    assert status == 406 and body["decided_by"] == "model"
    for name in ("chelsea", "rocket"):
        status, body = await post_media(client, animated_gif([name]))
        assert status == 200 and body["decided_by"] == "model", (name, body)
    status, body = await post_media(client, animated_gif(["astronaut"]))
    assert status == 406


async def test_own_bank_beats_the_classifier_and_allow_beats_the_own_bank(aiohttp_client: Client) -> None:
    client = await start(aiohttp_client, make_config(faces()))
    banks = services(client).banks
    sha256, _, frames = file_hashes(photo("coffee"))
    await banks.add(file_entries(OWN, sha256, frames))  # known to the instance, whatever the model says
    status, body = await post_media(client, variant("coffee"))
    assert status == 406 and body["decided_by"] == "bank"

    await banks.add(file_entries(ALLOW, sha256, frames))
    status, body = await post_media(client, variant("coffee", scale=0.6))
    assert status == 200 and body["decided_by"] == "bank" and body["detail"].startswith("bank allow: pdq:")


async def test_own_bank_never_learns_fallback_refusals(aiohttp_client: Client, tmp_path: Path) -> None:
    cfg = make_config(policy(ALWAYS), classifier={"pretrained": str(tmp_path / "missing" / "weights.bin")})
    client = await start(aiohttp_client, cfg, ready=False)
    status, body = await post_media(client, photo("coffee"))  # on_error (not ready)
    assert status == 503 and body["decided_by"] == "error"
    status, body = await post_media(client, b"%PDF-1.7\n1 0 obj\n")  # on_unsupported
    assert status == 406 and body["error_kind"] == "unsupported"
    status, body = await post_media(client, photo("coffee")[:2000])  # on_invalid (truncated)
    assert status == 406 and body["decided_by"] == "invalid"
    assert await services(client).banks.entries(OWN) == []


def test_only_a_classifier_label_learns() -> None:
    assert [d for d in DecidedBy if d.learns] == [DecidedBy.MODEL]


# --- the matcher and the store ---------------------------------------------------------------------


def test_bank_index_matches_by_role_and_quality() -> None:
    good, poor = PdqHash("f" * 64, 90), PdqHash("0" * 63 + "1", 10)
    index = BankIndex([BankEntry("own", "pdq", "f" * 64, quality=90), BankEntry("mine", "pdq", "0" * 64, quality=30),
                       BankEntry("allow", "sha256", "a" * 64)], {"own": BankRole.KNOWN, "mine": BankRole.KNOWN,
                                                                 "allow": BankRole.ALLOW})
    hit = index.match_pdq(BankRole.KNOWN, [good])
    assert hit is not None and hit.bank == "own" and hit.distance == 0
    assert index.match_pdq(BankRole.ALLOW, [good]) is None
    assert index.match_pdq(BankRole.KNOWN, [poor]) is None  # a query below quality 50 matches nothing
    assert index.match_pdq(BankRole.KNOWN, [PdqHash("0" * 64, 100)]) is None  # nor does an entry below it
    assert index.match_exact(BankRole.ALLOW, {"sha256": "a" * 64}) is not None
    assert index.exact_kinds == {"sha256"}


async def test_another_process_changing_the_store_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy.banks, "RELOAD_CHECK_S", 0.0)
    path = str(tmp_path / "audit.sqlite3")
    serving, cli = SqliteStore(path), SqliteStore(path)
    await serving.open()
    await cli.open()
    try:
        mine, theirs = Banks(serving), Banks(cli)
        await mine.open()
        await theirs.open()
        sha256, _, frames = file_hashes(photo("rocket"))
        await theirs.add(file_entries(OWN, sha256, frames))
        assert mine.index.match_exact(BankRole.KNOWN, {"sha256": sha256}) is None
        await mine.maybe_reload()
        assert mine.index.match_exact(BankRole.KNOWN, {"sha256": sha256}) is not None
        assert mine.index.match_pdq(BankRole.KNOWN, file_hashes(variant("rocket"))[2]) is not None
    finally:
        await serving.close()
        await cli.close()


# --- HMA CSV ---------------------------------------------------------------------------------------


def test_hma_csv_round_trip() -> None:
    sha256, _, frames = file_hashes(photo("astronaut"))
    entries = [BankEntry(e.bank, e.kind, e.value, e.quality, e.sha256, ("portrait", "auto"), 1_700_000_000.0, id=i)
               for i, e in enumerate(file_entries(OWN, sha256, frames), 1)]
    for kind in ("sha256", "pdq"):
        text = export_hma(entries, kind)
        rows = [line.split(",") for line in text.splitlines()]
        assert len(rows) == 1 and len(rows[0]) == 5  # hash,indicator_id,descriptor_id,timestamp,tags
        assert rows[0][3] == "2023-11-14T22:13:20+0000" and rows[0][4] == "portrait auto"
        back = import_hma(text, "shared", kind)
        assert [(e.kind, e.value, e.labels, e.ts) for e in back] == [(e.kind, e.value, e.labels, e.ts) for e in entries
                                                                     if e.kind == kind]
        assert export_hma(back, kind) == text


def test_hma_csv_reads_threatexchange_rows_and_names() -> None:
    row = ("acecf3355e3125c8e24e2f30e0d4ec4f8482b878b3c34cdbdf063278db275992,2880742865368386,2880742865368386,"
           "2020-07-31T18:47:52+0000,media_priority_pdq_samples disputed\n")
    (entry,) = import_hma(row, "te", "pdq")
    assert entry.indicator_id == "2880742865368386" and entry.labels == ("media_priority_pdq_samples", "disputed")
    assert kind_of_hma_file("exports/te.hash_pdq.te") == "pdq" and kind_of_hma_file("x.hash_md5.te") == "md5"
    with pytest.raises(ValueError, match="line 1: expected 5 columns"):
        import_hma("abc,1\n", "te", "pdq")
    with pytest.raises(ValueError, match="line 2: 'xyz' is not a valid pdq hash"):
        import_hma(row + "xyz,1,1,2020-07-31T18:47:52+0000,\n", "te", "pdq")


async def test_learning_extends_the_index_without_reading_every_bank_back(tmp_path: Path) -> None:
    """A refusal adds its hashes to the index in memory; the store is not read back whole for it (at
    100,000 own-bank entries that read cost about a second per refusal)."""
    from proxy.hashing import pdq_of
    from tests.support.photos import photo_image

    class CountingStore(SqliteStore):
        reads = 0

        async def bank_entries(self, bank: str | None = None) -> list[BankEntry]:
            CountingStore.reads += 1
            return await super().bank_entries(bank)

    store = CountingStore(str(tmp_path / "a.sqlite3"))
    await store.open()
    try:
        banks = Banks(store)
        await banks.open()
        reads = CountingStore.reads
        h = pdq_of(photo_image("astronaut"))
        assert await banks.learn("a" * 64, [h], ("portrait",)) == 2
        assert CountingStore.reads == reads
        assert banks.index.match_pdq(BankRole.KNOWN, [h]) is not None
        assert banks.index.match_exact(BankRole.KNOWN, {"sha256": "a" * 64}) is not None
        await banks.maybe_reload()  # our own write is no news: no reload
        assert CountingStore.reads == reads
    finally:
        await store.close()
