"""The docs: docs/results.md is what tools/render_results.py renders from bench/results/ now, and
every relative link in README.md and docs/*.md points to a file that exists."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def load_renderer():
    spec = importlib.util.spec_from_file_location(
        "render_results", ROOT / "tools/render_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_is_current():
    page = (ROOT / "docs/results.md").read_text()
    assert page == load_renderer().render(), (
        "docs/results.md is stale: run python tools/render_results.py"
    )


def test_results_page_has_one_section_per_results_file():
    page = (ROOT / "docs/results.md").read_text()
    files = sorted(p.name for p in (ROOT / "bench/results").glob("*.json"))
    assert files
    assert re.findall(r"^## (\S+\.json)$", page, flags=re.M) == files


def test_renderer_renders_a_file_of_unknown_shape_generically(tmp_path):
    renderer = load_renderer()
    data = {"command": "python bench/new.py --n 3", "seconds": 1.23456, "rows": [{"n": 3}]}
    (tmp_path / "new.json").write_text(json.dumps(data))
    page = renderer.render(tmp_path)
    assert "## new.json" in page
    assert "Written by `python bench/new.py --n 3`." in page
    assert "| seconds | 1.235 |" in page
    assert "| rows[0].n | 3 |" in page


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(page):
    missing = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = page.parent / path
        if not linked.exists():
            missing.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files or headings: {missing}"


def test_link_check_sees_links():
    readme = relative_links(ROOT / "README.md")
    assert "docs/demo.png" in readme
    assert any(t.startswith("docs/") and t.endswith(".md") for t in readme)
