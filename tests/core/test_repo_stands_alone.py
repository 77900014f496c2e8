"""The repository stands alone: nothing in it points outside it.

What the code relies on is written down in docs/ (docs/ollama.md, docs/linux.md, …) and cited
from there, never as a path to a document outside the checkout or as a tracker's issue number
(neither is there for someone who cloned the repository). Relative links in README.md and
docs/*.md lead to files that exist, and every section of docs/ cited anywhere (as in
``docs/ollama.md#eras``) names a heading that exists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TEXT_SUFFIXES = frozenset({".py", ".md", ".sh", ".yaml", ".yml", ".c", ".toml"})
TEXT_NAMES = frozenset({"Makefile"})
# Code, where a comment or docstring might cite an issue number (not prose: a report may
# quote a requirement by its old name).
CODE_SUFFIXES = frozenset({".py", ".sh", ".yaml", ".yml", ".c", ".toml"})
# Where files are not the project's own, when git cannot list them.
NOT_OURS = frozenset({".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache",
                      ".ruff_cache", ".hypothesis", ".whl"})

# Written in pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join(re.escape(text) for text in (
    "../" + "shared", "DESIGN" + ".md", "facts/" + "ollama.md", "facts/" + "linux.md")))
ISSUE = re.compile(r"\bissue\s*#?\d+|\(#\d+\)", re.IGNORECASE)

LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
CITATION = re.compile(r"(?<![\w/.-])docs/([\w-]+\.md)(?:#([\w-]+))?")
# Documents of other projects that the code names as theirs (the exporter-toolkit's).
FOREIGN_DOCS = frozenset({"web-configuration.md"})


def project_files() -> list[Path]:
    """The files git tracks or would track (not ignored), or a walk of the tree without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
        paths = {REPO / name for name in listed if name}
    except (OSError, subprocess.CalledProcessError):
        paths = {path for path in REPO.rglob("*")
                 if not NOT_OURS.intersection(path.relative_to(REPO).parts)}
    return sorted(path for path in paths if path.is_file())


def text_files(suffixes: frozenset[str] = TEXT_SUFFIXES) -> list[Path]:
    return [path for path in project_files()
            if path.suffix in suffixes or (suffixes is TEXT_SUFFIXES and path.name in TEXT_NAMES)]


def matching_lines(paths: list[Path], pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def relative_links(markdown: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", markdown.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: …


def test_the_checks_see_the_repository():
    names = {path.relative_to(REPO).as_posix() for path in text_files()}
    assert {"README.md", "Makefile", "docs/ollama.md", "vgpumon/cli.py"} <= names


def test_nothing_refers_to_documents_outside_the_repository():
    found = matching_lines(text_files(), OUTSIDE)
    assert not found, ("references outside the repository (cite docs/ instead):\n"
                       + "\n".join(found))


def test_code_cites_no_issue_numbers():
    found = matching_lines(text_files(CODE_SUFFIXES), ISSUE)
    assert not found, ("issue numbers in code, comments or docstrings (say what is meant, or "
                       "cite docs/):\n" + "\n".join(found))


def test_relative_links_in_the_docs_lead_to_existing_files():
    broken = []
    for document in documents():
        for target in relative_links(document):
            path = target.partition("#")[0]
            if not path:
                continue  # a section of the same document: see the anchor test
            resolved = (document.parent / path).resolve()
            if not resolved.exists() or REPO not in (resolved, *resolved.parents):
                broken.append(f"{document.relative_to(REPO)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_links_to_sections_of_the_docs_name_existing_headings():
    broken = []
    for document in documents():
        for target in relative_links(document):
            path, _, anchor = target.partition("#")
            if not anchor:
                continue
            resolved = (document.parent / path).resolve() if path else document
            if resolved.suffix != ".md" or not resolved.is_file():
                continue  # a missing file is the other test's finding
            if anchor not in anchors(resolved):
                broken.append(f"{document.relative_to(REPO)}: {target}")
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)


def test_citations_of_the_docs_name_existing_documents_and_sections():
    headings: dict[str, set[str]] = {}
    broken = []
    for path in text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for name, anchor in CITATION.findall(line):
                if name in FOREIGN_DOCS:
                    continue
                target = REPO / "docs" / name
                if name not in headings:
                    headings[name] = anchors(target) if target.is_file() else set()
                if not target.is_file() or (anchor and anchor not in headings[name]):
                    where = f"{path.relative_to(REPO)}:{number}"
                    broken.append(f"{where}: docs/{name}{'#' + anchor if anchor else ''}")
    assert not broken, "citations of docs that do not exist:\n" + "\n".join(broken)


def test_slugs_follow_githubs_rule():
    assert slug("From a kernel event to /metrics") == "from-a-kernel-event-to-metrics"
    assert slug("`vgpumon doctor`: one command") == "vgpumon-doctor-one-command"
    assert slug("Try it without a GPU (demo)") == "try-it-without-a-gpu-demo"
