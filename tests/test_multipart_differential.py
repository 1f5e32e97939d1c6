"""Our multipart parser against the parsers the backends use (tests/support/multipart_corpus.py runs them).

The rule, for every body in the corpus: either we refuse it (MultipartError, the proxy answers 400), or
every installed parser refuses it too or hands the application exactly the parts we found (names,
filenames, content digests), and every part it gives as a file is one we judge (``Part.is_file``).
A parser that is not installed is skipped with the command that installs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import pytest

from proxy.multipart import MultipartError, is_multipart, parse

from tests.support.multipart_corpus import (
    BUILD_DIR, PARSERS, Case, Unavailable, cases, conflicts, disagreements, encode_curl, encode_go, encode_node, mutations, ours,
    summary,
)
from tests.support.photos import photo

CORPUS = cases()
MUTATIONS = mutations(int(os.environ.get("MULTIPART_MUTATIONS", "60")), int(os.environ.get("MULTIPART_SEED", "1")))
"""Random edits on top of the labelled corpus; MULTIPART_MUTATIONS=2000 MULTIPART_SEED=7 runs more."""


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, dict] | str]:
    """Each parser's reports by case id, or why it could not run; one process per parser."""
    out: dict[str, dict[str, dict] | str] = {}
    for name, runner in PARSERS.items():
        try:
            out[name] = runner(CORPUS + MUTATIONS)
        except Unavailable as exc:
            out[name] = str(exc)
    ran = sorted(n for n, r in out.items() if isinstance(r, dict))
    print(f"\nmultipart parsers that ran: {', '.join(ran) or 'none'}")
    for name, r in out.items():
        if isinstance(r, str):
            print(f"multipart parser {name} skipped: {r}")
    BUILD_DIR.mkdir(exist_ok=True)
    (BUILD_DIR / "differential.json").write_text(json.dumps({
        "ran": ran,
        "skipped": {n: r for n, r in out.items() if isinstance(r, str)},
        "cases": {c.id: {"label": c.label, "ours": summary(ours(c.body, c.content_type)),
                         **{n: summary(r[c.id]) for n, r in out.items() if isinstance(r, dict)}} for c in CORPUS + MUTATIONS},
    }, indent=1, ensure_ascii=False))
    return out


def test_corpus_is_large_and_labelled() -> None:
    assert len(CORPUS) >= 60
    assert len({c.id for c in CORPUS}) == len(CORPUS)
    assert all(c.label for c in CORPUS)


@pytest.mark.parametrize("parser", list(PARSERS))
def test_ours_refuses_or_agrees(parser: str, reports: dict[str, dict[str, dict] | str]) -> None:
    results = reports[parser]
    if isinstance(results, str):
        pytest.skip(f"{parser} not available: {results}")
    assert set(results) == {c.id for c in CORPUS + MUTATIONS}, "the harness lost cases"
    failures = {c.id: problems for c in CORPUS + MUTATIONS if (problems := conflicts(c, results[c.id], parser))}
    assert not failures, json.dumps(failures, indent=1)


def test_every_body_a_parser_reads_is_one_we_parse(reports: dict[str, dict[str, dict] | str]) -> None:
    """A Content-Type the proxy does not take for multipart is forwarded unparsed: no parser may find parts in it."""
    ran = {n: r for n, r in reports.items() if isinstance(r, dict)}
    if not ran:
        pytest.skip("no parser ran; run scripts/install-test-tools.sh")
    missed = [(c.id, n) for c in CORPUS for n, r in ran.items() if r[c.id]["ok"] and r[c.id]["parts"] and not is_multipart(c.content_type)]
    assert not missed
    assert not is_multipart("application/json") and not is_multipart(None)


def test_parsers_really_disagree(reports: dict[str, dict[str, dict] | str]) -> None:
    """The corpus is worth running only while it holds bodies real parsers read differently."""
    ran = {n: r for n, r in reports.items() if isinstance(r, dict)}
    if len(ran) < 2:
        pytest.skip(f"needs two parsers, ran {sorted(ran)}; run scripts/install-test-tools.sh")
    split = [c.id for c, _ in disagreements(CORPUS, ran)]
    assert len(split) >= 10, split


PLAIN = [
    "baseline", "baseline_multi", "empty_file_input", "no_filename_ctype_jpeg", "no_filename_no_ctype", "no_filename_octet",
    "file_without_part_ctype", "ctype_no_space", "boundary_quoted", "boundary_quoted_space", "ctype_upper", "ctype_charset",
    "close_no_crlf", "header_lowercase", "header_uppercase", "header_no_space_after_colon",
    "header_content_length", "cte_binary", "filename_unquoted", "filename_utf8", "disposition_no_space",
    "filename_star_dotnet", "filename_star_dotnet_utf8", "part_ctype_charset_latin1", "part_ctype_charset_utf8",
    "nested_name", "disposition_form_data_upper", "boundary_param_upper",
    "name_indexed_hashes", "name_array_of_hashes", "filename_percent_literal", "filename_percent_utf8",
]


@pytest.mark.parametrize("case", [c for c in CORPUS if c.id in PLAIN], ids=lambda c: c.id)
def test_plain_bodies_are_accepted_and_every_photo_is_judged(case: Case) -> None:
    mp = parse(case.body, case.content_type)
    assert mp.without(set()) == case.body
    assert all(p.is_file for p in mp.parts if p.content(case.body)[:3] == b"\xff\xd8\xff")
    assert all(p.name in ("description", "fields_attributes[][name]", "fields_attributes[][value]", "fields_attributes[0][name]",
                          "fields_attributes[0][value]") or not p.content(case.body) for p in mp.parts if not p.is_file)


def test_every_accepted_body_strips_cleanly() -> None:
    for c in CORPUS:
        try:
            mp = parse(c.body, c.content_type)
        except MultipartError:
            continue
        for i in range(len(mp.parts)):
            if len(mp.parts) == 1:
                continue
            rest = parse(mp.without({i}), c.content_type)
            assert [p.content(rest.body) for p in rest.parts] == [p.content(c.body) for j, p in enumerate(mp.parts) if j != i]


@pytest.mark.parametrize("client", ["node", "go", "curl"])
def test_real_clients_bodies_are_accepted(client: str, tmp_path: Path) -> None:
    jpeg = photo("coffee")
    try:
        if client == "node":
            body, ctype = encode_node(jpeg)
        elif client == "go":
            body, ctype = encode_go(jpeg)
        else:
            body, ctype = encode_curl(jpeg, tmp_path)
    except Unavailable as exc:
        pytest.skip(str(exc))
    mp = parse(body, ctype)
    files = [mp.parts[i] for i in mp.files()]
    assert [(p.name, p.content(body)) for p in files] == [("file", jpeg)]
    assert unquote(files[0].filename or "").replace("%22", '"') == "café (1).jpg"
    assert [p.name for p in mp.parts if not p.is_file] == ["description"]
