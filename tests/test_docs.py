"""The documentation is executable: every ```python block of README.md and docs/*.md runs.

Blocks run per file, in order, in one namespace (so a file reads like one script), in a temporary
working directory. Blocks that are not meant to run are fenced as ```text, ```pycon or ```sh.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import versioning

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = sorted(
    path
    for path in [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")]
    if path.exists()
)

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each fenced block of ``language`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in _FENCE.finditer(text):
        if match.group(1) == language:
            line = text.count("\n", 0, match.start(2)) + 1
            out.append((line, match.group(2)))
    return out


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_documents_exist() -> None:
    names = {_name(path) for path in DOC_FILES}
    assert {
        "README.md",
        "CHANGELOG.md",
        "docs/index.md",
        "docs/getting-started.md",
        "docs/concepts.md",
        "docs/api.md",
    } <= names


@pytest.mark.parametrize(
    "path",
    [path for path in DOC_FILES if _blocks(path, "python")],
    ids=_name,
)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    try:
        for line, code in _blocks(path, "python"):
            # Padding keeps the file's line numbers in tracebacks; dont_inherit keeps this
            # module's `from __future__ import annotations` out of the documented code.
            source = "\n" * (line - 1) + code
            exec(compile(source, str(path), "exec", dont_inherit=True), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, sa.Engine):
                value.dispose()


@pytest.mark.parametrize("name", ["README.md", "docs/getting-started.md", "docs/concepts.md"])
def test_the_guides_have_examples(name: str) -> None:
    assert len(_blocks(ROOT / name, "python")) >= 1


def test_readme_gives_the_two_commands() -> None:
    commands = [code.strip() for _, code in _blocks(ROOT / "README.md", "sh")]
    assert "pip install . && python -m versioning demo" in commands
    assert "pip install -e '.[test]' && python -m pytest" in commands


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-e '.[test]'" in ci
    assert re.search(r"^python -m pytest$", ci, re.MULTILINE)


@pytest.mark.parametrize("path", DOC_FILES, ids=_name)
def test_relative_links_resolve(path: Path) -> None:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        assert (path.parent / file).exists(), f"{_name(path)} links to missing {target}"


def test_api_reference_covers_every_public_name() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,4} `([A-Za-z_][\w.]*)", text, re.MULTILINE)
    missing = [name for name in versioning.__all__ if name not in headings]
    assert not missing, f"docs/api.md has no heading for {missing}"
