"""The examples of the README and of every docs/ page run as written.

A fenced block's info string says what it is. Runnable: ``python`` (run with ``exec``),
``yaml policy`` (loaded as a policy file and used for a run), ``yaml policy-reference`` (loaded,
and it must name every field of the schema), ``sh run`` (run with bash in the checkout). Shown
only here: ``text``, ``sh``, ``json``, ``bash`` (``test_docs_service.py`` runs the ``bash``
blocks of docs/service.md against a real server) and ``python packages`` (``test_packages.py``
runs them against a package index of its own). Any other fence, or a runnable one this test would not collect (an
indented or ``~~~`` fence), fails ``test_every_block_is_marked_and_collected``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from athena.mcp.memory_api import MemoryAPI
from orchestrator.policy import Policy, load_policy

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = ("python", "yaml policy", "yaml policy-reference", "sh run")
# bash: test_docs_service.py runs them; python packages: test_packages.py runs them against a
# package index of its own (here they would reach the real one).
SHOWN = ("text", "sh", "bash", "json", "python packages")
# Column 0, backticks: the only fences the runner collects.
COLLECTED_FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
# Any CommonMark fence (indented, backticks or tildes): what a reader would see as a block.
ANY_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int
    info: str
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ```{self.info}"


def pages() -> list[Path]:
    """The front page and every page under docs/ (subfolders included)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def collected_blocks() -> list[Block]:
    """The blocks the runner sees: column-0 backtick fences, by info string."""
    found = []
    for page in pages():
        text = page.read_text()
        for match in COLLECTED_FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            info = " ".join(match.group(1).split())
            found.append(Block(_name(page), line, info, match.group(2)))
    return found


def every_fence() -> Iterator[tuple[str, int, str, str]]:
    """Each opening fence a reader sees: page, line, the fence itself and its info string."""
    for page in pages():
        closing: str | None = None
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            match = ANY_FENCE.match(line)
            if not match:
                continue
            fence, info = match.group(1), " ".join(match.group(2).split())
            if closing is None:
                closing = fence
                yield _name(page), number, line[: len(line) - len(line.lstrip())] + fence, info
            elif fence.startswith(closing) and not info:
                closing = None


def runnable_blocks() -> list[Block]:
    """The blocks this module runs."""
    return [block for block in collected_blocks() if block.info in RUNNABLE]


def test_every_block_is_marked_and_collected() -> None:
    """Every fence is a column-0 ``` with a known info string, so no example goes unrun."""
    collected = {(b.page, b.line) for b in collected_blocks()}
    problems = []
    for page, line, fence, info in every_fence():
        where = f"{page}:{line} {fence}{info}"
        if info not in RUNNABLE + SHOWN:
            problems.append(f"{where}: unknown info string (runnable: {RUNNABLE}; shown: {SHOWN})")
        elif fence != "```" or (page, line) not in collected:
            problems.append(f"{where}: not collected; use ``` at column 0")
    assert not problems, "\n".join(problems)


def test_pages_have_runnable_examples() -> None:
    """The front page and the docs hold runnable examples of every kind the runner knows."""
    kinds = {block.info for block in runnable_blocks()}
    assert kinds == set(RUNNABLE)
    assert any(b.page == "README.md" and b.info == "python" for b in runnable_blocks())


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_resolve() -> None:
    """Every relative link of the pages names an existing file and, if given, one of its headings."""
    broken = []
    for page in pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in _anchors(linked)):
                broken.append(f"{_name(page)}: {target}")
    assert not broken, broken


def test_front_page_links_every_page() -> None:
    """The README links each page under docs/, so none is reachable only by browsing."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(pages()[0].read_text())}
    assert [_name(p) for p in pages()[1:] if p.resolve() not in linked] == []


@pytest.fixture
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Examples that open the default store get a fresh one, not the user's."""
    db = tmp_path / "memory.db"
    monkeypatch.delenv("ATHENA_MEMORY_URL", raising=False)
    monkeypatch.setenv("ATHENA_MEMORY_DB", str(db))
    monkeypatch.chdir(ROOT)
    return db


def _run_python(block: Block, tmp_path: Path) -> None:
    exec(compile(block.text, str(block), "exec"), {})


def _run_policy(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(block.text)
    load_policy(path)
    with MemoryAPI.create(tmp_path / "policy-run.db") as api:
        result = api.execute_code("print(1)", sandbox_policy=str(path))
    assert result["success"], result


def _field_paths(model: type[pydantic.BaseModel], prefix: str = "") -> set[str]:
    """Every field of a model and of the models it holds, as dotted paths."""
    paths = set()
    for name, field in model.model_fields.items():
        paths.add(prefix + name)
        for inner in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
                paths |= _field_paths(inner, f"{prefix}{name}.")
    return paths


def _key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a YAML document, as dotted paths (list items under their list's key)."""
    if isinstance(value, list):
        return set().union(*(_key_paths(item, prefix) for item in value))
    if not isinstance(value, dict):
        return set()
    paths = set()
    for key, inner in value.items():
        paths.add(prefix + key)
        paths |= _key_paths(inner, f"{prefix}{key}.")
    return paths


def _run_reference(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "reference.yaml"
    path.write_text(block.text)
    load_policy(path)  # no unknown field, every value valid
    missing = _field_paths(Policy) - _key_paths(yaml.safe_load(block.text))
    assert not missing, f"{block} does not describe {sorted(missing)}"


def _run_sh(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{block} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


RUNNERS: dict[str, Callable[[Block, Path], None]] = {
    "python": _run_python,
    "yaml policy": _run_policy,
    "yaml policy-reference": _run_reference,
    "sh run": _run_sh,
}


def test_every_runnable_kind_has_a_runner() -> None:
    """Each info string marked runnable has a runner here."""
    assert set(RUNNERS) == set(RUNNABLE)


@pytest.mark.usefixtures("isolated_store")
@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: f"{b.page}:{b.line}")
def test_example_runs(block: Block, tmp_path: Path) -> None:
    """Each runnable block of README.md and docs/ runs without error (its asserts included)."""
    RUNNERS[block.info](block, tmp_path)
