"""Every ``docs/design.md §X`` in the tree names a section the design document has.

Comments, docstrings and docs cite the design of record by section number; a renumbered or
removed section would leave them pointing at nothing, and nobody would notice. The document's
own ``§X`` cross-references are held to the same rule.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"

# A numbered heading: "## 4. Atomic switch…", "### 4.2 The prepare".
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)
# "docs/design.md §4", "`docs/design.md` §8.3's", "docs/design.md §4.2, §4.4, §5",
# "docs/design.md §3.4–§3.6", possibly wrapped onto the next line of a comment.
REFERENCE = re.compile(
    r"docs/design\.md`?((?:\s*(?:,|–|and)?\s*(?:#\s*)?§\d+(?:\.\d+)*)+)", re.MULTILINE
)
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")

SKIP_DIRS = {".git", ".venv", "venv", "build", "node_modules", "__pycache__", ".confbus"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".ini", ".json", ".sh"}


def sections(text: str) -> list[str]:
    return HEADING.findall(text)


def cited(text: str) -> list[str]:
    """The section numbers ``text`` cites after ``docs/design.md``."""
    return [s for ref in REFERENCE.findall(text) for s in SECTION.findall(ref)]


def tree_files() -> list[Path]:
    out = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if path == Path(__file__).resolve():
            continue  # its examples below are not references
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name == "Makefile"):
            out.append(path)
    return out


def test_the_design_document_numbers_each_section_once() -> None:
    numbers = sections(DESIGN.read_text())
    assert len(numbers) > 50, "docs/design.md lost its numbered headings"
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    assert repeated == [], f"section numbers used twice in docs/design.md: {repeated}"
    for number in numbers:
        parent = number.rpartition(".")[0]
        assert not parent or parent in numbers, f"§{number} has no §{parent} above it"


def test_every_reference_in_the_tree_names_a_section_that_exists() -> None:
    known = set(sections(DESIGN.read_text()))
    dangling = []
    found = 0
    for path in tree_files():
        text = path.read_text(errors="replace")
        for number in cited(text):
            found += 1
            if number not in known:
                dangling.append(f"{path.relative_to(REPO)}: docs/design.md §{number}")
    # The scan must be seeing the references (services, schemas, tests and docs cite it).
    assert found >= 40, f"only {found} references to docs/design.md found: is the scan broken?"
    assert dangling == [], "references to sections docs/design.md does not have:\n" + "\n".join(
        dangling
    )


def test_the_design_documents_own_cross_references_exist() -> None:
    text = DESIGN.read_text()
    known = set(sections(text))
    dangling = sorted({n for n in SECTION.findall(text) if n not in known})
    assert dangling == [], f"docs/design.md cites sections it does not have: {dangling}"


def test_nothing_cites_the_design_outside_the_repository() -> None:
    # The starting design (``DESIGN §N``) is not in the repository: cite docs/design.md.
    old = [
        str(path.relative_to(REPO))
        for path in tree_files()
        if re.search(r"\bDESIGN\b", path.read_text(errors="replace"))
    ]
    assert old == [], f"cite docs/design.md §N instead of DESIGN: {old}"


def test_the_reference_pattern_reads_every_form_the_tree_uses() -> None:
    text = """
        (docs/design.md §4)  `docs/design.md` §8.3's  (docs/design.md §4.2, §4.4, §5)
        (docs/design.md §3.4–§3.6)  docs/design.md §10.2 says  docs/design.md §8 does
        a comment that wraps: docs/design.md
        # §4.5 and §9.3
        docs/design.md with no section; §7 alone is not a reference
    """
    assert cited(text) == ["4", "8.3", "4.2", "4.4", "5", "3.4", "3.6", "10.2", "8", "4.5", "9.3"]
    known = {"4", "4.2", "4.4", "5", "3.4", "3.6", "10.2", "8", "4.5", "9.3"}
    assert [n for n in cited(text) if n not in known] == ["8.3"]
