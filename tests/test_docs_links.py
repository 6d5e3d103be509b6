"""Every relative link and image in README.md and docs/**/*.md points at a file or folder that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target) and ![alt](target), with an optional "title"; code spans and blocks are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")
EXTERNAL = ("http://", "https://", "mailto:")


def without_code(text: str) -> str:
    """The page without fenced blocks and inline code, whose brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_targets(text: str) -> list[str]:
    """Relative link and image paths of a page, #fragments stripped; external links and pure #anchors left out."""
    text = without_code(text)
    targets = []
    for target in LINK.findall(text) + HTML_SOURCE.findall(text):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_link_pattern_finds_links_and_images_and_skips_code():
    text = (
        'see [a](docs/a.md#part), ![b](images/b.png "title"), [c](https://x.org), [d](#here),\n'
        '`[not](a/link.md)`\n```\n[nor](this.md)\n```\n<img src="c.png">'
    )
    assert relative_targets(text) == ["docs/a.md", "images/b.png", "c.png"]


def test_the_pages_have_links_to_check():
    assert sum(len(relative_targets(page.read_text())) for page in PAGES) >= 20


def resolves_inside_the_repository(page: Path, target: str) -> bool:
    """A link outside the checkout (e.g. into ../shared) would be broken for every other reader."""
    path = (page.parent / target).resolve()
    return path.exists() and path.is_relative_to(ROOT)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    targets = relative_targets(page.read_text())
    missing = [target for target in targets if not resolves_inside_the_repository(page, target)]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
