"""Unit tests of the code validator: Python (ast), JavaScript and bash (tree-sitter)."""

from __future__ import annotations

import pytest

from orchestrator.errors import UnknownLanguageError
from orchestrator.languages import LANGUAGES
from orchestrator.models import ValidationIssue
from orchestrator.policy import BashRules, JavascriptRules, Validation, load_policy
from orchestrator.validator import CodeValidator

STRICT = load_policy("strict").validation
NOTHING = Validation()
VALIDATOR = CodeValidator()


def issues(
    code: str, language: str = "python", rules: Validation = STRICT
) -> list[ValidationIssue]:
    return VALIDATOR.validate(code, language, rules)


def found(
    code: str, language: str = "python", rules: Validation = STRICT
) -> list[tuple[int | None, str, str]]:
    """Return (line, severity, rule) of each finding, in the validator's order."""
    return [(i.line, i.severity, i.rule) for i in issues(code, language, rules)]


def errors(code: str, language: str = "python", rules: Validation = STRICT) -> list[str]:
    return [i.rule for i in issues(code, language, rules) if i.severity == "error"]


def only_imports(*names: str) -> Validation:
    return Validation(forbidden_imports=names)


def only_calls(*names: str) -> Validation:
    return Validation(forbidden_calls=names)


def only_modules(*names: str) -> Validation:
    return Validation(javascript=JavascriptRules(forbidden_modules=names))


def only_commands(*names: str) -> Validation:
    return Validation(bash=BashRules(forbidden_commands=names))


# --------------------------------------------------------------------------- general


def test_issues_are_sorted_by_line_errors_first() -> None:
    """Findings come back ordered by line, and errors before warnings on the same line."""
    code = "import os\nx = 1\nos.system('a')\nimport subprocess\nf.__globals__, eval('1')\n"
    assert found(code) == [
        (3, "error", "forbidden_call"),
        (4, "error", "forbidden_import"),
        (5, "error", "forbidden_call"),
        (5, "warning", "introspection"),
    ]


def test_language_aliases_are_accepted() -> None:
    """An alias of a language (py, js, sh, rb) selects the same checks as the canonical name."""
    assert found("import socket", "py") == [(1, "error", "forbidden_import")]
    assert found('require("net")', "js") == [(1, "error", "forbidden_module")]
    assert found("curl x", "sh") == [(1, "error", "forbidden_command")]
    assert found("require 'socket'", "rb") == [(1, "error", "forbidden_library")]


def test_unknown_language_raises() -> None:
    """A language we do not run is a caller error, not an empty list of findings."""
    with pytest.raises(UnknownLanguageError):
        VALIDATOR.validate("x", "cobol", STRICT)


def test_empty_code_has_no_findings() -> None:
    """Empty code is valid in every language."""
    for language in LANGUAGES:
        assert issues("", language.name) == []


# --------------------------------------------------------------------------- Python: syntax


def test_python_syntax_error_is_one_error_with_its_line() -> None:
    """A Python syntax error is one error with rule syntax, its line and the parser's message."""
    [issue] = issues("x = 1\ndef f(:\n    pass\n")
    assert (issue.line, issue.severity, issue.rule) == (2, "error", "syntax")
    assert issue.message == "SyntaxError: invalid syntax"


def test_python_nul_character_is_a_syntax_issue() -> None:
    """Source with a NUL character gives a syntax error on the NUL's line instead of a crash."""
    [issue] = issues("a = 1\nb = 'x\0y'\n")
    assert (issue.line, issue.severity, issue.rule) == (2, "error", "syntax")
    assert "null" in issue.message


def test_python_too_deeply_nested_code_is_a_syntax_issue() -> None:
    """Code nested beyond the parser's limits gives a syntax error instead of a crash."""
    assert found("a" + ".b" * 100_000) == [(1, "error", "syntax")]


def test_python_long_attribute_chain_does_not_crash() -> None:
    """An attribute chain the parser accepts is checked without hitting Python's recursion limit."""
    assert found("import os\nos" + ".path" * 1500 + "\nos.system") == [
        (3, "error", "forbidden_call")
    ]


# --------------------------------------------------------------------------- Python: imports


def test_ordinary_python_code_passes_strict() -> None:
    """Usual imports and calls (os, math, json, os.path.join) are not findings under strict."""
    code = "import os\nimport math, json\nprint(os.path.join('a', math.pi, json.dumps(1)))\n"
    assert issues(code) == []


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess",
        "import subprocess as sp",
        "import os, subprocess",
        "from subprocess import run",
        "from subprocess import *",
        "import concurrent.futures.process",
        "import concurrent.futures.process as p",
        "from concurrent.futures import process",
        "from concurrent.futures import thread, process",
        "from asyncio import subprocess",
        "import asyncio.subprocess",
        "import ctypes.util",
        "from ctypes.util import *",
    ],
)
def test_forbidden_imports_are_errors(code: str) -> None:
    """Every import form of a forbidden module, dotted entries and submodules included, is found."""
    assert found("x = 1\n" + code) == [(2, "error", "forbidden_import")]


def test_forbidden_import_message_says_what_and_why() -> None:
    """The message names the module and the policy field that forbids it."""
    [issue] = issues("import subprocess")
    assert issue.message == "import of 'subprocess' is forbidden by the policy (forbidden_imports)"
    [sub] = issues("import ctypes.util")
    assert sub.message == (
        "import of 'ctypes.util' is forbidden by the policy (forbidden_imports lists 'ctypes')"
    )


@pytest.mark.parametrize(
    "code",
    [
        "import concurrent.futures",
        "from concurrent.futures import thread, ThreadPoolExecutor",
        "import asyncio",
        "from asyncio import sleep",
        "import socketserver_helpers",
        "from . import subprocess",
        "from .subprocess import run",
        "from ..socket import x",
    ],
)
def test_allowed_imports_are_not_findings(code: str) -> None:
    """Parents of dotted entries, names that only share a prefix, and relative imports pass."""
    assert issues(code) == []


def test_literal_dunder_import_is_checked_against_forbidden_imports() -> None:
    """__import__("x") with a literal name is checked like an import statement."""
    rules = only_imports("socket")
    assert found("x = 1\n__import__('socket')", rules=rules) == [(2, "error", "forbidden_import")]
    assert issues("__import__('json')", rules=rules) == []


@pytest.mark.parametrize(
    "code",
    [
        "import importlib\nimportlib.import_module('socket')",
        "import importlib as il\nil.import_module('socket.x')",
        "from importlib import import_module\nimport_module(name='socket')",
    ],
)
def test_literal_import_module_is_checked_against_forbidden_imports(code: str) -> None:
    """importlib.import_module("x") with a literal name, under any alias, is checked."""
    assert found(code, rules=only_imports("socket")) == [(2, "error", "forbidden_import")]


@pytest.mark.parametrize(
    "code",
    [
        "m = 'x'\n__import__('sub' + 'process')",
        "m = 'x'\n__import__(m)",
        "import importlib\nimportlib.import_module(m)",
        "import importlib\nimportlib.import_module(name=''.join(['so', 'cket']))",
        "import builtins\nbuiltins.__import__(m)",
    ],
)
def test_computed_module_names_are_dynamic_import_errors(code: str) -> None:
    """__import__/import_module with a computed name cannot be checked, so it is an error."""
    assert found(code, rules=only_imports("socket")) == [(2, "error", "dynamic_import")]


def test_dynamic_import_message_says_why() -> None:
    """The dynamic-import message shows the expression and says it cannot be checked."""
    [issue] = issues("__import__('sub' + 'process')", rules=only_imports("socket"))
    assert "('sub' + 'process')" in issue.message
    assert "cannot be checked" in issue.message


def test_dynamic_import_is_allowed_when_nothing_is_forbidden() -> None:
    """A policy that forbids no imports has nothing a computed name could hide."""
    assert (
        issues("__import__(name)\nimport importlib\nimportlib.import_module(m)", rules=NOTHING)
        == []
    )


def test_relative_and_allowed_literal_import_module_pass() -> None:
    """import_module with an allowed or relative literal name is not a finding."""
    code = "import importlib\nimportlib.import_module('json')\nimportlib.import_module('.x', 'p')"
    assert issues(code, rules=only_imports("socket")) == []


# --------------------------------------------------------------------------- Python: calls


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("eval('1')", 1),
        ("x = 1\nexec('y = 2')", 2),
        ("compile('1', 'f', 'eval')", 1),
        ("breakpoint()", 1),
        ("import os\nos.system('ls')", 2),
        ("import os\n\nos.fork()", 3),
        ("import os as o\no.system('ls')", 2),
        ("import os\nf = os.system", 2),
        ("xs = []\nlist(map(eval, xs))", 2),
        ("import os\ngetattr(os, 'system')('ls')", 2),
        ("import os as o\ngetattr(o, 'popen')", 2),
        ("getattr(x, 'eval')('1')", 1),
        ("import builtins as b\ngetattr(b, 'exec')", 2),
        ("__builtins__.eval('1')", 1),
        ("import builtins\nbuiltins.eval('1')", 2),
        ("def f(os):\n    os.system('ls')", 2),
        ("from os import *\nsystem('ls')", 2),
    ],
)
def test_forbidden_calls_and_references_are_errors(code: str, line: int) -> None:
    """Forbidden callables are found through aliases, references, getattr and the builtins."""
    calls = [(i.line, i.severity) for i in issues(code) if i.rule == "forbidden_call"]
    assert calls == [(line, "error")]


def test_builtins_subscript_is_a_forbidden_call() -> None:
    """__builtins__["eval"] is eval: an error, besides the introspection warning."""
    assert found("x = 1\n__builtins__['eval']('1')") == [
        (2, "error", "forbidden_call"),
        (2, "warning", "introspection"),
    ]


def test_importing_a_forbidden_callable_is_an_error_and_so_is_its_use() -> None:
    """from os import system is a finding itself; calling it under an alias is another."""
    code = "from os import system as run\nx = 1\nrun('ls')"
    assert found(code) == [(1, "error", "forbidden_call"), (3, "error", "forbidden_call")]
    assert found("from os import system") == [(1, "error", "forbidden_call")]


def test_forbidden_call_messages_show_what_was_written() -> None:
    """The message names the forbidden callable and, when different, how the code wrote it."""
    [alias] = [i for i in issues("import os as o\no.system('x')") if i.line == 2]
    assert alias.message == (
        "use of 'os.system' (as 'o.system') is forbidden by the policy (forbidden_calls)"
    )
    [plain] = issues("eval('1')")
    assert plain.message == "use of 'eval' is forbidden by the policy (forbidden_calls)"
    [imported] = issues("from os import system")
    assert imported.message == "import of 'os.system' is forbidden by the policy (forbidden_calls)"


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.path.join('a', 'b')",
        "def compile(pattern):\n    return pattern\ncompile('x')",
        "class compile:\n    pass\ncompile()",
        "eval = 1\nprint(eval)",
        "def f(exec):\n    return exec()",
        "import re\nre.compile('x')",
        "import re\ngetattr(re, 'compile')",
        "obj.system('x')",
        "obj.eval()",
        "x = 'eval(1)'  # eval(2)",
        "getattr(obj, name)",
        "d = {}\nd['eval']",
    ],
)
def test_harmless_lookalikes_are_not_forbidden_calls(code: str) -> None:
    """User definitions shadowing a builtin, methods, strings and comments are not findings."""
    assert issues(code) == []


def test_forbidden_calls_follow_the_rules_given() -> None:
    """Only the callables the rules list are findings."""
    assert issues("eval('1')", rules=only_calls("exec")) == []
    assert found("exec('1')", rules=only_calls("exec")) == [(1, "error", "forbidden_call")]


# --------------------------------------------------------------------------- Python: introspection


@pytest.mark.parametrize(
    ("code", "attribute"),
    [
        ("x = 1\n().__class__.__bases__", "__bases__"),
        ("x = 1\nobject.__subclasses__()", "__subclasses__"),
        ("x = 1\nf.__globals__", "__globals__"),
        ("x = 1\nf.__code__", "__code__"),
        ("x = 1\nint.__mro__", "__mro__"),
        ("x = 1\nm.__builtins__", "__builtins__"),
        ("x = 1\ngetattr(f, '__globals__')", "__globals__"),
    ],
)
def test_introspection_escape_routes_are_warnings(code: str, attribute: str) -> None:
    """Access to the usual escape-route attributes is a warning (a hint in a container)."""
    assert found(code, rules=NOTHING) == [(2, "warning", "introspection")]
    assert attribute in issues(code, rules=NOTHING)[0].message


def test_ordinary_dunders_are_not_introspection() -> None:
    """__name__, __init__, __dict__ and __class__ are ordinary Python, not findings."""
    code = "print(__name__, x.__init__, x.__dict__, x.__class__, x.__doc__)"
    assert issues(code) == []


# --------------------------------------------------------------------------- JavaScript


@pytest.mark.parametrize(
    "code",
    [
        'const cp = require("child_process");',
        "const cp = require('node:child_process');",
        "const cp = require(`child_process`);",
        'import x from "net";',
        'import { spawn } from "node:child_process";',
        'import * as tls from "tls";',
        'import "dgram";',
        'const w = await import("worker_threads");',
        'export { Socket } from "net";',
        'export * from "net";',
        'const vm = module.require("vm");',
        'const s = `${require("http")}`;',
        'const cp = require(/* why not */ "child_process");',
    ],
)
def test_forbidden_javascript_modules_are_errors(code: str) -> None:
    """Every way of loading a forbidden module (require, import, export from) is found."""
    assert found("let a = 1;\n" + code, "javascript") == [(2, "error", "forbidden_module")]


def test_forbidden_module_message_says_what_and_why() -> None:
    """The message names the module as written and the policy field that forbids it."""
    [issue] = issues('require("node:child_process")', "javascript")
    assert issue.message == (
        "loading module 'node:child_process' is forbidden by the policy "
        "(javascript.forbidden_modules)"
    )


def test_javascript_subpaths_match_their_module() -> None:
    """fs/promises matches the entry fs; a module that only shares a prefix does not."""
    rules = only_modules("fs")
    assert found('require("fs/promises")', "javascript", rules) == [
        (1, "error", "forbidden_module")
    ]
    assert errors('import p from "node:fs/promises"', "javascript", rules) == ["forbidden_module"]
    assert issues('require("fsevents")', "javascript", rules) == []


@pytest.mark.parametrize(
    "code",
    [
        'const fs = require("fs");',
        'const s = "child_process";\nconsole.log(s);',
        '// require("net")\n/* import "dgram" */',
        'const u = require("network-utils");',
        'import path from "node:path";',
        "myObject.binding('x');",
        "const http = 1; http.get();",
    ],
)
def test_harmless_javascript_is_not_a_finding(code: str) -> None:
    """Allowed modules, strings, comments and lookalike names are not findings under strict."""
    assert issues(code, "javascript") == []


@pytest.mark.parametrize(
    "code",
    [
        "const m = require(name);",
        'const m = require("child_" + "process");',
        "const m = await import(spec);",
        "const m = require(`${prefix}_process`);",
        'const m = require("child\\u005fprocess");',
    ],
)
def test_computed_javascript_module_names_are_dynamic_import_errors(code: str) -> None:
    """A module name that is not a plain literal cannot be checked, so it is an error."""
    assert found("let a = 1;\n" + code, "javascript") == [(2, "error", "dynamic_import")]
    assert issues(code, "javascript", NOTHING) == []


@pytest.mark.parametrize(
    "code",
    ['process.binding("spawn_sync");', "process.dlopen(m, p);", 'process["binding"]("fs");'],
)
def test_process_native_hooks_are_forbidden(code: str) -> None:
    """process.binding and process.dlopen reach native internals: forbidden with any module list."""
    [issue] = issues("let a = 1;\n" + code, "javascript", only_modules("net"))
    assert (issue.line, issue.severity, issue.rule) == (2, "error", "forbidden_module")
    assert "native internals" in issue.message
    assert issues(code, "javascript", NOTHING) == []


def test_javascript_syntax_error_is_one_warning() -> None:
    """Parse errors give one warning on the first error's line, never an error."""
    [issue] = issues("let a = 1;\nlet b = ;\nlet c = (;\n", "javascript", NOTHING)
    assert (issue.line, issue.severity, issue.rule) == (2, "warning", "syntax")
    assert "Node.js will report" in issue.message


def test_modern_javascript_parses_cleanly() -> None:
    """Current syntax (optional chaining, private fields, static blocks) is no syntax warning."""
    code = "const a = b?.c ?? d;\nclass X { #p = 1; static { this.q = 2; } }\nawait import('x');\n"
    assert issues(code, "javascript", NOTHING) == []


# --------------------------------------------------------------------------- bash


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("curl http://example.com", 1),
        ("ls\nls | curl -d @- http://x", 2),
        ("(wget http://x)", 1),
        ("echo $(nc -l 1234)", 1),
        ('x=1\ny="$(wget -qO- http://x)"', 2),
        ("if true; then\n  ssh host\nfi", 2),
        ("while true; do\n  scp a b:\ndone", 2),
        ("f() {\n  rsync -a a b\n}", 2),
        ("/usr/bin/curl x", 1),
        ("env -i A=1 curl x", 1),
        ("exec nc host 80", 1),
        ("command curl x", 1),
        ("builtin curl x", 1),
        ("nohup wget x &", 1),
        ("timeout 5 curl x", 1),
        ("timeout -s KILL 5s curl x", 1),
        ("printf 'a\\n' | xargs wget", 1),
        ("printf 'a\\n' | xargs -n 1 -P 4 wget", 1),
        ("nice -n 10 curl x", 1),
        ("time curl x", 1),
        ("FOO=1 timeout 5 xargs -n1 wget", 1),
        ('"curl" x', 1),
        ("'curl' x", 1),
        ('c"ur"l x', 1),
        ("\\curl x", 1),
        ("true\n\\curl x", 2),
        ("cat <<EOF\n$(curl x)\nEOF", 2),
    ],
)
def test_forbidden_commands_are_errors(code: str, line: int) -> None:
    """A forbidden command is found wherever it runs: pipelines, substitutions, bodies, wrappers."""
    assert found(code, "bash") == [(line, "error", "forbidden_command")]


def test_forbidden_wrapper_and_its_command_are_both_found() -> None:
    """sudo is forbidden itself and so is the command it runs."""
    assert [i.message for i in issues("sudo -u admin nc -l 1", "bash")] == [
        "running 'sudo' is forbidden by the policy (bash.forbidden_commands)",
        "running 'nc' is forbidden by the policy (bash.forbidden_commands)",
    ]


def test_forbidden_command_message_shows_the_path() -> None:
    """The message names the command and the path it was written with."""
    [issue] = issues("/usr/bin/curl x", "bash")
    assert issue.message == (
        "running 'curl' (as '/usr/bin/curl') is forbidden by the policy (bash.forbidden_commands)"
    )


@pytest.mark.parametrize(
    "code",
    [
        "ls | grep x",
        "echo curl",
        "# curl in a comment",
        "ls  # then curl",
        "grep -r wget .",
        "echo 'curl x'",
        "command -v curl >/dev/null || echo missing",
        "timeout 5 grep curl notes.txt",
        "cat <<'EOF'\ncurl x\nEOF",
        "echo /dev/tcp/host/80",
        "curly x",
    ],
)
def test_harmless_bash_is_not_a_finding(code: str) -> None:
    """Forbidden names as arguments, strings, comments or lookups are not findings."""
    assert issues(code, "bash") == []


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("echo x > /dev/udp/1.2.3.4/53", 1),
        ("x=1\ncat < /dev/tcp/example.com/80", 2),
        ('echo x > "/dev/tcp/$host/80"', 1),
    ],
)
def test_network_redirections_are_forbidden(code: str, line: int) -> None:
    """Redirections to /dev/tcp or /dev/udp open connections: forbidden with any command list."""
    [issue] = issues(code, "bash", only_commands("curl"))
    assert (issue.line, issue.severity, issue.rule) == (line, "error", "forbidden_command")
    assert "network connection" in issue.message
    assert issues(code, "bash", NOTHING) == []


def test_read_write_tcp_redirection_is_forbidden() -> None:
    """exec 3<>/dev/tcp/... is found although tree-sitter-bash only half parses `<>`."""
    assert errors("x=1\nexec 3<>/dev/tcp/host/80", "bash") == ["forbidden_command"]
    assert (2, "error", "forbidden_command") in found("x=1\nexec 3<>/dev/tcp/host/80", "bash")


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("x=1\n$cmd a", 2),
        ('x=1\n"$(echo curl)" x', 2),
        ('x=1\neval "$cmd"', 2),
        ('x=1\nbash -c "$script"', 2),
        ("x=1\nenv $tool x", 2),
    ],
)
def test_computed_commands_are_computed_command_errors(code: str, line: int) -> None:
    """Command names and scripts computed at run time cannot be checked: errors under a list."""
    assert found(code, "bash") == [(line, "error", "computed_command")]
    assert issues(code, "bash", NOTHING) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ('x=1\neval "curl x"', [(2, "error", "forbidden_command")]),
        ('x=1\nbash -c "ls"', []),
    ],
)
def test_literal_scripts_are_parsed_not_guessed(code: str, expected: list[object]) -> None:
    """eval and bash -c with literal strings are checked as the scripts they are."""
    assert found(code, "bash") == expected


def test_bash_syntax_error_is_one_warning() -> None:
    """Parse errors give one warning on the first error's line, never an error."""
    [issue] = issues("echo a\necho )\nif true; then\n", "bash", NOTHING)
    assert (issue.line, issue.severity, issue.rule) == (2, "warning", "syntax")
    assert "bash will report" in issue.message


def test_forbidden_commands_follow_the_rules_given() -> None:
    """Only the commands the rules list are findings."""
    assert issues("curl x", "bash", only_commands("wget")) == []
    assert found("wget x", "bash", only_commands("wget")) == [(1, "error", "forbidden_command")]


@pytest.mark.parametrize(
    "code",
    [
        '__builtins__["ev" + "al"]("1")',
        'import os\ngetattr(os, "sys" + "tem")("id")',
        "import os as o\nf = getattr(o, name)",
    ],
)
def test_computed_names_on_builtins_or_guarded_modules_are_refused(code: str) -> None:
    """A callable reached by a computed name on the builtins or on os cannot hide: dynamic_call."""
    issues = CodeValidator().validate(code, "python", load_policy("strict").validation)
    assert any(i.rule == "dynamic_call" and i.severity == "error" for i in issues), issues


def test_computed_getattr_on_ordinary_objects_is_fine() -> None:
    """getattr(self, name) with a computed name is ordinary code and is not flagged."""
    issues = CodeValidator().validate(
        "getattr(handler, 'on_' + event)()", "python", load_policy("strict").validation
    )
    assert issues == []
