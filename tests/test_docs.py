"""The repository's documents refer only to themselves: every relative Markdown link resolves, every cited section
exists, and nothing points outside the repository (issue 17, part 5).

* Links: every ``[text](target)`` and ``![alt](target)`` outside fenced code in a tracked ``*.md`` whose target is
  not a URL or a bare ``#anchor`` must name an existing file or folder, relative to the Markdown file.
* Sections: every citation "``path.md §n``" in a tracked text file (docstrings, comments, configs, documents) —
  also written "``path.md`` §n", "[...](path.md) §n", or as a range "§n–§m" / "§n–m" — must name a numbered
  heading of that file ("## n. Title" or "### n.m Title"). ``path`` is taken relative to the repository root, or
  else relative to the citing file's folder.
* Outside: no tracked text file mentions the shared folder outside the repository, by relative or absolute path.

Each rule is a function of (root, files), so the tests at the end plant a broken link, a missing section and an
outside reference in a temporary folder and check that each one is reported.
"""
from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
NUMBER = r"\d+(?:\.\d+)*"
# A path ending in .md (optionally in backquotes, or as a link target) followed by a section sign and a number, and
# optionally a range: "–" or "-", an optional second section sign, a second number.
CITATION = re.compile(r"(?:\]\(([^)\s#]+\.md)\)|([\w./-]*\w\.md)`?)\s*§(" + NUMBER + r")(?:\s*[–-]\s*§?(" + NUMBER
                      + r"))?")
HEADING = re.compile(r"^#{1,6}\s+(" + NUMBER + r")\.?\s")
OUTSIDE = ("/".join(["..", "shared"]), "/".join(["", "work", "shared"]))


def tracked_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The files git tracks under ``root`` that exist in the working tree."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [p for p in (root / name for name in out.decode().split("\0") if name) if p.is_file()]


def read_text(path: pathlib.Path) -> str | None:
    """The file as UTF-8 text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _prose_lines(text: str):
    """(line number, line) for the lines of a Markdown text outside fenced code blocks."""
    fenced = False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield i, line


def broken_links(root: pathlib.Path, files) -> list[str]:
    """'file:line: target' for each relative Markdown link whose target does not exist."""
    bad = []
    for path in files:
        if path.suffix != ".md":
            continue
        for i, line in _prose_lines(read_text(path) or ""):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                    continue
                if not (path.parent / target.split("#")[0]).exists():
                    bad.append(f"{path.relative_to(root)}:{i}: {target}")
    return bad


def section_numbers(path: pathlib.Path) -> set[str]:
    """The numbers of the numbered headings of a Markdown file ('6', '6.1', …), outside fenced code."""
    return {m.group(1) for _, line in _prose_lines(path.read_text()) if (m := HEADING.match(line))}


def bad_citations(root: pathlib.Path, files) -> list[str]:
    """'file:line: citation (reason)' for each "path.md §n" that names no file or no heading of that file."""
    bad, headings = [], {}
    for path in files:
        text = read_text(path)
        if text is None:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                name = m.group(1) or m.group(2)
                candidates = [root / name, path.parent / name]
                doc = next((c.resolve() for c in candidates if c.is_file()), None)
                if doc is None:
                    bad.append(f"{path.relative_to(root)}:{i}: {m.group(0)} (no such file)")
                    continue
                if doc not in headings:
                    headings[doc] = section_numbers(doc)
                missing = [n for n in m.group(3, 4) if n is not None and n not in headings[doc]]
                if missing:
                    bad.append(f"{path.relative_to(root)}:{i}: {m.group(0)} (no section {', '.join(missing)})")
    return bad


def outside_references(root: pathlib.Path, files) -> list[str]:
    """'file:line' for each line of a tracked text file that mentions the shared folder outside the repository."""
    bad = []
    for path in files:
        for i, line in enumerate((read_text(path) or "").splitlines(), 1):
            if any(ref in line for ref in OUTSIDE):
                bad.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    return bad


@pytest.fixture(scope="module")
def files():
    try:
        return tracked_files(ROOT)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")


def test_every_relative_link_resolves(files):
    assert broken_links(ROOT, files) == []


def test_every_cited_section_exists(files):
    assert bad_citations(ROOT, files) == []


def test_the_theory_is_cited_by_its_path(files):
    """Citations name docs/THEORY.md by its path, never as a bare THEORY or THEORY.md that a reader cannot find."""
    bare = re.compile(r"(?<![\w/`\[(])THEORY(?:\.md)? §")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate((read_text(p) or "").splitlines(), 1)
            if bare.search(line)]
    assert hits == []


def test_nothing_points_outside_the_repository(files):
    assert outside_references(ROOT, files) == []


def test_the_theory_has_its_sections():
    assert {str(n) for n in range(1, 11)} | {"6.1"} <= section_numbers(ROOT / "docs" / "THEORY.md")


# ---- each rule can fail ----------------------------------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "SPEC.md").write_text("# Spec\n\n## 1. One\n\n### 1.1 Detail\n\n## 2. Two\n")
    return tmp_path


def test_a_broken_link_is_reported(planted):
    good = planted / "GOOD.md"
    good.write_text("[spec](docs/SPEC.md#1-one), [site](https://example.org), [top](#spec)\n"
                    "```\n[not a link](nowhere.md)\n```\n")
    bad = planted / "BAD.md"
    bad.write_text("See [the spec](docs/SPEC.md) and ![a figure](docs/missing.png).\n")
    assert broken_links(planted, [good]) == []
    assert broken_links(planted, [bad]) == ["BAD.md:1: docs/missing.png"]


def test_a_missing_section_is_reported(planted):
    sec = "\N{SECTION SIGN}"  # written as an escape so that this file cites no section itself
    src = planted / "code.py"
    src.write_text(f'"""docs/SPEC.md {sec}1, `docs/SPEC.md` {sec}1.1, docs/SPEC.md {sec}1–{sec}2, docs/SPEC.md {sec}2."""\n')
    assert bad_citations(planted, [src]) == []
    (planted / "docs" / "NOTE.md").write_text(f"[`SPEC.md`](SPEC.md) {sec}2 and SPEC.md {sec}1.1\n")
    assert bad_citations(planted, [planted / "docs" / "NOTE.md"]) == []
    src.write_text(f"# docs/SPEC.md {sec}3\n# docs/SPEC.md {sec}1–4\n# docs/OTHER.md {sec}1\n")
    assert bad_citations(planted, [src]) == [f"code.py:1: docs/SPEC.md {sec}3 (no section 3)",
                                             f"code.py:2: docs/SPEC.md {sec}1–4 (no section 4)",
                                             f"code.py:3: docs/OTHER.md {sec}1 (no such file)"]


def test_an_outside_reference_is_reported(planted):
    src = planted / "README.md"
    src.write_text("fine\nsee " + OUTSIDE[0] + "/THEORY.md\nand " + OUTSIDE[1] + "/NOTES.md\n")
    assert [r.split(":")[1] for r in outside_references(planted, [src])] == ["2", "3"]
