"""Every relative link in README.md and docs/ resolves to a file or folder in the repository, and
every `#anchor` into a markdown page names one of its headings. External links are not fetched."""

from __future__ import annotations

import glob
import os
import re
from typing import Dict, List

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INDENTED_CODE = re.compile(r"(?:^\n)((?:^(?: {4}|\t)[^\n]*\n?)+)", re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced blocks, indented code blocks and code spans (links there are not links)."""
    text = FENCE.sub("", text)
    text = INDENTED_CODE.sub("\n", text)
    return CODE_SPAN.sub("", text)


def links(text: str) -> List[str]:
    """The link targets of a markdown text: inline links and images, reference definitions, <img src>, <a href>."""
    prose = _prose(text)
    return INLINE_LINK.findall(prose) + REFERENCE_DEF.findall(prose) + HTML_SRC.findall(prose)


def anchors(text: str) -> set:
    """GitHub's heading ids: lower case, punctuation dropped, each space a hyphen, repeats numbered -1, -2..."""
    seen: Dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", text), re.M):
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text stays
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: str, root: str = ROOT) -> List[str]:
    """'target: why' for each relative link of `page` that does not resolve inside `root`."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    root = os.path.realpath(root)
    broken = []
    for target in links(text):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.realpath(os.path.join(os.path.dirname(page), path)) if path else os.path.realpath(page)
        if os.path.commonpath([resolved, root]) != root:
            broken.append(f"{target}: outside the repository")
        elif not os.path.exists(resolved):
            broken.append(f"{target}: no such file or folder")
        elif anchor and resolved.endswith(".md"):
            with open(resolved, encoding="utf-8") as f:
                if anchor not in anchors(f.read()):
                    broken.append(f"{target}: no heading with the id {anchor!r} in {os.path.relpath(resolved, root)}")
    return broken


def test_every_relative_link_resolves():
    broken = {os.path.relpath(p, ROOT): b for p in PAGES if (b := broken_links(p))}
    assert not broken, f"broken links: {broken}"


def test_docs_index_lists_every_page():
    with open(os.path.join(ROOT, "docs", "index.md"), encoding="utf-8") as f:
        listed = {os.path.normpath(t.partition("#")[0]) for t in links(f.read())}
    pages = {os.path.basename(p) for p in PAGES if os.path.dirname(p) == os.path.join(ROOT, "docs")} - {"index.md"}
    assert pages <= listed, f"docs/index.md does not list {sorted(pages - listed)}"


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Title here\n\n## A `code` heading, (with) punctuation\n")
    (tmp_path / "docs" / "pic.png").write_bytes(b"")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# A\n\n"
        "[ok](b.md) [ok](b.md#title-here) [ok](b.md#a-code-heading-with-punctuation) ![ok](pic.png)\n"
        "[ok](#a) [ext](https://example.com/none) <img src=\"pic.png\">\n"
        "[gone](missing.md) ![gone](nope.png) <img src=\"nope.jpg\"> [out](../../outside.md)\n"
        "[bad anchor](b.md#nothing)\n\n[ref]: gone/ref.md\n\n"
        "`[code](not-a-link.md)`\n\n```\n[fenced](not-a-link.md)\n```\n\n    [indented](not-a-link.md)\n")
    got = broken_links(str(page), root=str(tmp_path))
    assert [g.split(":")[0] for g in got] == ["missing.md", "nope.png", "../../outside.md", "b.md#nothing",
                                               "gone/ref.md", "nope.jpg"], got
