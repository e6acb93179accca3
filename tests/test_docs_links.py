"""Every relative link and image in README.md and docs/**/*.md points at a file that exists, and every `#anchor`
at a heading of that page, so a moved or renamed page fails here at once (the strict docs build, `make docs`,
checks docs/ again the way the site renders it). Anchors are GitHub's heading slugs, which mkdocs.yml also
uses, so one link works on the code host and on the site. Links from docs/ stay inside docs/: the site
holds nothing else (name a code path as `code`, not as a link)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", flags=re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", flags=re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold one level of brackets (an image in a link)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", flags=re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", flags=re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """The page without its fenced blocks and HTML comments (a `# comment` in a shell block is no heading)."""
    return HTML_COMMENT.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (pymdownx.slugs.slugify(case="lower") in mkdocs.yml gives the same):
    the text as rendered, lower case, without punctuation but `-` and `_`, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text.replace("`", ""))
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings. A repeated heading's second anchor differs between the code host
    (`-1`) and mkdocs (`_1`): only the first counts, so a link never points at a repeat."""
    return {slug(title) for _, title in HEADING.findall(prose(page.read_text()))}


def links(page: Path) -> list[str]:
    """Every link and image target in the page's prose (code spans and fenced blocks are not links)."""
    text = CODE_SPAN.sub("", prose(page.read_text()))
    return INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text)


def broken(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, points nowhere; None when it resolves."""
    if not target or EXTERNAL.match(target):
        return None
    path, _, anchor = unquote(target).partition("#")
    if path.startswith("/"):
        return "an absolute path: link relative to the page"
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
    if file.is_dir():
        return "a folder: link a file in it (the docs site has no page for a folder)"
    if page.is_relative_to(DOCS) and not file.is_relative_to(DOCS):
        return "outside docs/: the docs site holds only docs/ (name a code path as `code`)"
    if anchor and (file.suffix != ".md" or anchor not in anchors(file)):
        return f"no heading with the anchor #{anchor} in {file.relative_to(ROOT)}"
    return None


def test_the_pages_have_links_to_check():
    readme = links(ROOT / "README.md")
    assert any(t.startswith("docs/") and t.endswith(".md") for t in readme)
    assert any(t.endswith(".png") for t in readme)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_image_points_somewhere(page):
    bad = [f"({target}): {why}" for target in links(page) if (why := broken(page, target))]
    assert not bad, f"{page.relative_to(ROOT)} has links that point nowhere:\n" + "\n".join(bad)


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    """The site's home (docs/index.md) aside: a page nothing links to is lost on the code host."""
    linked = {
        (page.parent / unquote(t).partition("#")[0]).resolve()
        for page in PAGES
        for t in links(page)
        if t and not EXTERNAL.match(t) and unquote(t).partition("#")[0]
    }
    orphans = [
        str(p.relative_to(ROOT))
        for p in DOCS.rglob("*.md")
        if p.resolve() not in linked and p != DOCS / "index.md"
    ]
    assert not orphans, f"pages no page links to: {orphans}"


def test_the_checker_catches_what_it_should(tmp_path, monkeypatch):
    """The checker itself: a missing file, a missing anchor, a folder and a link out of docs/ are caught;
    links in code, external links and a heading's GitHub anchor pass."""
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (tmp_path / "code.py").write_text("")
    (docs / "sub" / "b.md").write_text("# B\n\n## The `x_y` stage: what's in it?\n")
    page = docs / "a.md"
    page.write_text(
        "# A\n\n```bash\n# not a heading\n```\n\n[ok](sub/b.md#the-x_y-stage-whats-in-it) [ok](#a) "
        "`[code](nowhere.md)` [web](https://example.org/x.md)\n"
        "[gone](sub/c.md) [anchor](sub/b.md#not-a-heading) [folder](sub/) [out](../code.py) [self](#not-a-heading)\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", docs)
    found = {t: broken(page, t) for t in links(page)}
    assert [t for t, why in found.items() if why] == [
        "sub/c.md",
        "sub/b.md#not-a-heading",
        "sub/",
        "../code.py",
        "#not-a-heading",
    ], found
