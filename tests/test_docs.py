"""The documentation is executable: every ```python block of README.md and docs/*.md runs.

Blocks run per file, in order, in one namespace (so a file reads like one script). Blocks that are
not meant to run are fenced as ```text, ```pycon or ```sh.

A reader runs the examples where they are, again and in any order: so each file runs twice in a
row, and all of them in reversed and shuffled order, in a temporary working directory that must
stay empty (no example leaves a file behind, so none can collide with another's) and with a
private temporary directory that must be empty again after each file.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

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


EXAMPLES = [path for path in DOC_FILES if _blocks(path, "python")]


def _run_document(path: Path) -> None:
    """Run the ``python`` blocks of ``path`` in order, in one fresh namespace."""
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    try:
        for line, code in _blocks(path, "python"):
            # Padding keeps the file's line numbers in tracebacks; dont_inherit keeps this
            # module's `from __future__ import annotations` out of the documented code.
            source = "\n" * (line - 1) + code
            exec(compile(source, str(path), "exec", dont_inherit=True), namespace)
    finally:
        # Only after a failure is there anything left to close: the examples close their own.
        for value in namespace.values():
            if isinstance(value, sa.Engine):
                value.dispose()
        for value in namespace.values():
            if isinstance(value, tempfile.TemporaryDirectory):
                value.cleanup()  # a no-op if the example removed it


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An empty working directory, and an empty private directory for ``tempfile``."""
    cwd = tmp_path / "cwd"
    temp = tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return cwd, temp


def _run_and_check(path: Path, workdir: tuple[Path, Path], when: str) -> None:
    _run_document(path)
    for folder, what in zip(workdir, ["working directory", "temporary directory"], strict=True):
        left = sorted(str(item.relative_to(folder)) for item in folder.iterdir())
        assert not left, f"{_name(path)} ({when}) left {left} in the {what}"


@pytest.mark.parametrize("path", EXAMPLES, ids=_name)
def test_python_blocks_run_twice_in_a_row(path: Path, workdir: tuple[Path, Path]) -> None:
    _run_and_check(path, workdir, "first run")
    _run_and_check(path, workdir, "second run")


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_the_examples_run_in_any_order(order: str, workdir: tuple[Path, Path]) -> None:
    paths = list(reversed(EXAMPLES))
    # A new order each run; DOCS_ORDER_SEED=<seed from the message> repeats a failing one.
    seed = int(os.environ.get("DOCS_ORDER_SEED") or random.randrange(2**32))
    if order == "shuffled":
        random.Random(seed).shuffle(paths)
    when = f"shuffled order, DOCS_ORDER_SEED={seed}" if order == "shuffled" else order + " order"
    for path in paths:
        _run_and_check(path, workdir, when)


def test_the_fastapi_example_is_the_module_uvicorn_serves(
    workdir: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs say: save the app block as billing.py and run ``uvicorn billing:app``."""
    from fastapi.testclient import TestClient

    integrations = DOCS / "integrations.md"
    assert "uvicorn billing:app --no-proxy-headers" in integrations.read_text(encoding="utf-8")
    [(_, code)] = [block for block in _blocks(integrations, "python") if "FastAPI(" in block[1]]
    cwd, temp = workdir
    module_dir = temp.parent / "app"
    module_dir.mkdir()
    (module_dir / "billing.py").write_text(code, encoding="utf-8")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    spec = importlib.util.spec_from_file_location("billing", module_dir / "billing.py")
    assert spec is not None and spec.loader is not None
    billing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(billing)  # complete on its own: no name from the other blocks

    # uvicorn starts the app (the lifespan seeds invoice 1), serves it, and stops it.
    with TestClient(billing.app, client=("127.0.0.1", 5000)) as client:
        response = client.post(
            "/invoices/1/pay",
            headers={"Authorization": "Bearer token-bob", "X-Forwarded-For": "198.51.100.66"},
        )
        assert response.json() == {"status": "paid", "paid_by": "bob"}
        with Session(billing.engine) as session:
            paid = versioning.history(session, billing.Invoice, 1)[1].transaction
        # The peer as `uvicorn --no-proxy-headers` passes it on: not a proxy, header ignored.
        assert (paid.actor, paid.source_ip) == ("bob", "127.0.0.1")
        assert list(temp.iterdir())  # the database lives while the app runs...
    assert not list(temp.iterdir())  # ...and the lifespan removes it when the app stops
    assert not list(cwd.iterdir())


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
