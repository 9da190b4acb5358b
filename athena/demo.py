"""``athena-sandbox demo``: a short tour of what each policy allows, on the real engine."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "python",
        "import os, numpy as np\n"
        "total = int(np.arange(parameters['n']).sum())\n"
        "print(f'sum={total} user={os.getuid()} net={sorted(os.listdir(\"/sys/class/net\"))}')\n"
        "output = {'sum': total}\n",
        {"n": 10},
    ),
    (
        "javascript",
        "const fs = require('fs');\n"
        "console.log(`${parameters.greeting} from node ${process.version}, "
        "project: ${fs.existsSync('/project') ? 'mounted' : 'absent'}`);\n",
        {"greeting": "hello"},
    ),
    (
        "bash",
        'echo "$PARAM_GREETING from $(id -un); root fs: $(touch /x 2>&1 | cut -d: -f3)"',
        {"greeting": "hi"},
    ),
    (
        "ruby",
        'puts "#{parameters["greeting"]} from ruby #{RUBY_VERSION}, '
        'tmp writable: #{File.writable?("/tmp")}"\n'
        "output = {words: parameters['greeting'].split.size}\n",
        {"greeting": "good day"},
    ),
)
GUARANTEES: tuple[tuple[str, str, str, float], ...] = (
    ("endless loop", "python", "while True:\n    pass\n", 1.0),
    ("memory bomb", "python", "hog = bytearray(2 * 1024**3)\n", 10.0),
    # The shell stays alive (a builtin loop, no fork) so the bomb meets the process limit while
    # the run is still going; a shell that exits at once ends the run before the limit is met.
    ("fork bomb", "bash", ":(){ :|:& };:\nwhile (( SECONDS < 2 )); do true; done\n", 5.0),
    ("forbidden import", "python", "import subprocess\nsubprocess.run(['id'])\n", 10.0),
)


def _summary(result: dict[str, Any]) -> str:
    if result["error"]:
        issues = "; ".join(i["message"] for i in result["issues"])
        return f"error: {result['error']}" + (f" ({issues})" if issues else "")
    if result["violations"]:
        return "; ".join(result["violations"])
    lines = result["stdout"].strip().splitlines() or result["stderr"].strip().splitlines()
    return lines[0] if lines else ""


def _row(echo: Callable[[str], None], label: str, language: str, result: dict[str, Any]) -> None:
    ok = "yes" if result["success"] else "no"
    echo(
        f"{label:<18} {language:<10} {ok:<4} {result['exit_code']:>4} "
        f"{result['total_time_ms']:>7.0f}  {_summary(result)}"
    )


def run_demo(db: str | None, echo: Callable[[str], None] = print) -> None:
    """Run the examples under strict, research and development, then the guarantees."""
    from athena.api import MemoryAPI

    with tempfile.TemporaryDirectory(prefix="athena-demo-") as tmp:
        path = db or str(Path(tmp) / "memory.db")
        with MemoryAPI.create(path) as api:
            echo(f"{'policy / case':<18} {'language':<10} {'ok':<4} {'exit':>4} {'ms':>7}  result")
            for policy in ("strict", "research", "development"):
                for language, code, parameters in EXAMPLES:
                    result = api.execute_code(code, language, parameters, 30, policy)
                    _row(echo, policy, language, result)
            for label, language, code, timeout in GUARANTEES:
                _row(
                    echo, label, language, api.execute_code(code, language, None, timeout, "strict")
                )
            count = len(api.store.list_executions(limit=1000))
        echo(
            f"\n{count} runs recorded in {path}"
            + ("" if db else " (a temporary file; pass --db to keep it)")
        )
