"""`athena-sandbox demo` on the real engine: every language runs, every guarantee holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from athena.demo import EXAMPLES, GUARANTEES, run_demo
from orchestrator.languages import LANGUAGES

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_every_registered_language_has_a_demo_example() -> None:
    """A language added to the registry without a demo example fails here."""
    assert sorted(language for language, _, _ in EXAMPLES) == sorted(
        language.name for language in LANGUAGES
    )


def test_demo_runs_each_example_and_each_guarantee_is_refused(tmp_path: Path) -> None:
    """Every example succeeds under every policy; every guarantee ends in its violation."""
    lines: list[str] = []
    run_demo(str(tmp_path / "demo.db"), echo=lines.append)
    rows = [line.split(maxsplit=3) for line in lines[1:] if line and not line.startswith("\n")]
    examples = [row for row in rows if row[0] in {"strict", "research", "development"}]
    assert len(examples) == 3 * len(EXAMPLES)
    assert all(row[2] == "yes" for row in examples), "\n".join(lines)
    by_case = {line.split("  ")[0].strip(): line for line in lines if line[:1].isalpha()}
    expected = {
        "endless loop": "timeout:",
        "memory bomb": "memory:",
        "fork bomb": "processes:",
        "forbidden import": "forbidden by the policy",
    }
    assert set(expected) == {label for label, *_ in GUARANTEES}
    for label, evidence in expected.items():
        assert " no " in by_case[label] and evidence in by_case[label], by_case[label]
    assert f"{3 * len(EXAMPLES) + len(GUARANTEES)} runs recorded" in lines[-1]
