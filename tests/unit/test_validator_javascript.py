"""Hostile JavaScript the validator must refuse under research, and ordinary JavaScript it accepts.

Each hostile form loaded a forbidden module, or could, under the research policy before these
rules: the loader through aliases, the module system's internals, code from strings, process
members by computed names.
"""

from __future__ import annotations

import pytest

from orchestrator.models import ValidationIssue
from orchestrator.policy import JavascriptRules, Validation, load_policy
from orchestrator.validator import CodeValidator

RESEARCH = load_policy("research").validation
VALIDATOR = CodeValidator()


def issues(code: str, rules: Validation = RESEARCH) -> list[ValidationIssue]:
    return VALIDATOR.validate(code, "javascript", rules)


def errors(code: str, rules: Validation = RESEARCH) -> set[str]:
    """Return the rules of the error findings."""
    return {i.rule for i in issues(code, rules) if i.severity == "error"}


@pytest.mark.parametrize(
    "code",
    [
        "const r = require; r('child_process');",
        "const { require: r } = module; r('child_process');",
        "const o = { require }; o.require('child_process');",
        "require.call(null, 'child_process');",
        "require.apply(null, ['child_process']);",
        "require.bind(null)('child_process');",
        "Reflect.apply(require, null, ['child_process']);",
        "module.require;",
        "module.constructor._load('child_process');",
        "module.constructor['_load']('child_process');",
        "module.parent.constructor;",
        "module.children[0];",
        "require.main.constructor._load('child_process');",
        "require.main['const' + 'ructor'];",
        "process.mainModule.constructor._load('child_process');",
        "require('module')._load('child_process');",
        "import Module from 'module'; Module._load('child_process');",
        "import { createRequire } from 'module'; const r = createRequire(import.meta.url);",
        "import { createRequire } from 'node:module'; createRequire(import.meta.url)('net');",
        "x._load('child_process');",
    ],
)
def test_the_loader_through_aliases_and_internals_is_refused(code: str) -> None:
    """require handed on, called indirectly, or Module's internals: module_alias."""
    assert "module_alias" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        "const p = process; p.binding('spawn_sync');",
        "f(process);",
        "[process][0].binding('spawn_sync');",
        "Reflect.get(process, 'binding')('spawn_sync');",
        "const { binding } = process; binding('spawn_sync');",
        "const { ...p } = process; p.binding('spawn_sync');",
        "function f({ binding }) { return binding('fs'); }",
        "with (process) { binding('spawn_sync'); }",
        "Object.assign({}, globalThis);",
        "const { constructor } = x;",
    ],
)
def test_process_and_the_global_object_handed_on_are_refused(code: str) -> None:
    """process or globalThis as a value, or destructured for its internals: module_alias."""
    assert "module_alias" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        "process['bind' + 'ing']('spawn_sync');",
        "process[key];",
        "process?.['bind' + 'ing'];",
        "globalThis['req' + 'uire']('child_process');",
        "globalThis['ev' + 'al']('1');",
        "global[name];",
        "const { [k]: v } = process;",
    ],
)
def test_computed_members_of_guarded_objects_are_dynamic_calls(code: str) -> None:
    """A member of process or the global object by a computed name: dynamic_call."""
    assert "dynamic_call" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        "process.binding('spawn_sync');",
        "process._linkedBinding('x');",
        "process.dlopen(m, p);",
        "process.\\u0062inding('x');",
        "globalThis.process.binding('x');",
        "globalThis['process']['binding']('x');",
        "process.mainModule.require('child_process');",
        "require.main.require('child_process');",
        "module.parent.require('child_process');",
    ],
)
def test_native_hooks_and_module_requires_are_forbidden_modules(code: str) -> None:
    """process.binding & co. and require on any Module object are checked: forbidden_module."""
    assert "forbidden_module" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        "eval('1');",
        "(0, eval)('1');",
        "const e = eval; e('1');",
        "\\u0065val('1');",
        "globalThis.eval('1');",
        "global['eval']('1');",
        "new Function('return process')();",
        "Function('return 1')();",
        "(() => {}).constructor('return process')();",
        "[].filter.constructor('return process')();",
        "Object.getPrototypeOf(async function () {}).constructor('x');",
        "const F = x.constructor.constructor; F('return 1');",
        "module._compile('module.exports = 1', 'x.js');",
        "import('data:text/javascript,export default 1');",
        "import 'data:text/javascript,console.log(1)';",
    ],
)
def test_code_from_strings_is_dynamic_code(code: str) -> None:
    """eval, Function, constructors called and data: URLs run code the checks cannot read."""
    assert "dynamic_code" in errors(code)


def test_dynamic_import_with_computed_name_is_still_refused() -> None:
    """import() with a name computed at run time stays a dynamic_import."""
    assert errors("const m = await import(spec);") == {"dynamic_import"}


def test_messages_say_what_cannot_be_checked() -> None:
    """Messages name the construct and say it cannot be checked against the policy."""
    [alias] = issues("const r = require; r('x');")
    assert alias.message.startswith("require is handed on or used as a value")
    assert "cannot be checked against javascript.forbidden_modules" in alias.message
    [code] = issues("eval('1');")
    assert code.message.startswith("eval runs a string as code")


def test_guards_apply_only_when_modules_are_forbidden() -> None:
    """With no forbidden modules nothing is refused; with any, the loader is guarded."""
    code = "const r = require; eval('1'); process[k]; module.constructor._load('x');"
    assert issues(code, Validation()) == []
    only_net = Validation(javascript=JavascriptRules(forbidden_modules=("net",)))
    assert errors(code, only_net) == {"module_alias", "dynamic_code", "dynamic_call"}


ORDINARY = [
    "const fs = require('fs');\nconst path = require('path');\n"
    "const data = JSON.parse(fs.readFileSync(path.join(__dirname, 'x.json'), 'utf8'));",
    "import fs from 'node:fs/promises';\nimport { join } from 'path';\n"
    "const text = await fs.readFile(join('/tmp', 'a.txt'), 'utf8');",
    "class Point {\n  constructor(x, y) { this.x = x; this.y = y; }\n"
    "  norm() { return Math.hypot(this.x, this.y); }\n}\nconsole.log(new Point(3, 4).norm());",
    "async function main() {\n  const r = await Promise.all([1, 2].map(async (x) => x * 2));\n"
    "  console.log(r);\n}\nmain().catch((e) => { console.error(e); process.exit(1); });",
    "const { env, argv } = process;\n"
    "console.log(env.HOME, argv.length, process.env.PATH, process.cwd(), process.memoryUsage());",
    "process.stdout.write('x\\n');\nprocess.on('exit', () => {});\nprocess.exitCode = 0;",
    "if (require.main === module) { main(); }\nmodule.exports = { main };\nexports.y = 2;",
    "const o = { a: 1 };\n"
    "console.log(o.constructor.name, o.constructor === Object, o instanceof Function);",
    "console.log(typeof eval, typeof require, typeof process);",
    "const { readFile } = require('fs');\nconst [a, b] = [1, 2];\n"
    "const { x, y: z, ...rest } = { x: 1, y: 2, w: 3 };",
    "const key = 'a';\nconst o = {};\no[key] = 1;\nconsole.log(o[key], `${key}!`);",
    "import { createRequire } from 'module';\nconst require = createRequire(import.meta.url);\n"
    "const fs = require('fs');",
    "const resolved = require.resolve('fs');\nconsole.log(module.filename, module.id, __filename);",
    "try { JSON.parse('x'); } catch (err) { console.error(err.message); }\n"
    "class A extends Error { constructor(m) { super(m); this.name = 'A'; } }",
    "export default function run(params) { return params.x * 2; }\nexport const y = 1;",
]


@pytest.mark.parametrize("code", ORDINARY)
def test_ordinary_javascript_has_no_findings(code: str) -> None:
    """fs, path, JSON, classes, async/await, process.env and module.exports pass research."""
    assert issues(code) == []


@pytest.mark.parametrize(
    "code",
    [
        "function f(process) { return process.x; }\nf({ x: 1 });",
        "const items = [{ name: 'a' }];\nitems.forEach((module) => console.log(module.name));",
        "function process(data) { return data * 2; }\nconsole.log(process(2));",
        "import process from 'node:process';\nconsole.log(process.argv, process.env.X);",
        "import { argv, env } from 'node:process';\nconsole.log(argv, env);",
        "const process = require('process');\nconsole.log(process.env.X);",
        "try { x(); } catch (module) { console.log(module.message); }",
        "for (const module of mods) { console.log(module.name); }",
    ],
)
def test_names_the_code_declares_itself_are_its_own(code: str) -> None:
    """A parameter, function or variable named process or module is the user's, not Node's."""
    assert issues(code) == []


@pytest.mark.parametrize(
    "code",
    [
        "const p = require('process'); p.binding('spawn_sync');",
        "import p from 'process'; p.binding('x');",
        "import * as p from 'node:process'; p.binding('x');",
        "import { binding } from 'process'; binding('x');",
        "function f(process) { return process.binding('x'); }\nf(process);",
        "const process = globalThis.process; process.binding('x');",
    ],
)
def test_the_process_module_under_another_name_is_refused(code: str) -> None:
    """process loaded or handed on under another name hides its members: refused."""
    assert "module_alias" in errors(code)


def test_the_process_module_under_its_own_name_is_checked() -> None:
    """const process = require('process') is process: its native hooks are still found."""
    code = "{ const process = require('process'); process.binding('spawn_sync'); }"
    assert errors(code) == {"forbidden_module"}
