"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    """The README shows at least one Python example (so the next test checks something)."""
    assert _python_blocks()


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_example_runs(index: int) -> None:
    """Each ```python block of the README runs without error (its asserts included)."""
    exec(compile(_python_blocks()[index], f"README.md python block {index}", "exec"), {})
