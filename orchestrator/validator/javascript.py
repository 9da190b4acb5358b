"""JavaScript: tree-sitter checks of module loading and the routes around it.

Modules load through ``require``, ``import``, ``import()`` and ``module.require``; the checks
read the module name when it is a plain literal and refuse it otherwise. The loader and its
neighbours are guarded so that no alias hides them: ``require``, ``module``, ``process``,
``eval``, ``Function`` and the global object may be used only in the plain ways (``require("x")``,
``module.exports``, ``process.env.X``, ``const {env} = process``); handed on as values, reached
by computed names or destructured for their internals they are refused. Code built from strings
(``eval``, ``Function``, ``x.constructor(...)``, ``data:`` URLs) is refused too: it could load
anything. All of this applies when ``javascript.forbidden_modules`` is set.

Rules: ``forbidden_module``, ``dynamic_import`` (a module name computed at run time),
``dynamic_call`` (a guarded object's member by a computed name), ``dynamic_code`` (code from a
string), ``module_alias`` (the loader, ``module`` or ``process`` handed on or taken apart), and
``syntax`` (a warning).
"""

from __future__ import annotations

from collections.abc import Callable

import tree_sitter

from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation
from orchestrator.validator.common import (
    covered,
    error,
    line,
    match,
    parse,
    refused,
    snippet,
    syntax_warning,
    text,
    walk,
)
from orchestrator.validator.javascript_names import (
    compared,
    identifier_name,
    is_callee,
    is_identifier,
    is_object_of,
    is_reference,
    key_name,
    loader,
    member_key,
    shadowed,
    string_value,
    typeof,
    user_of,
)

Node = tree_sitter.Node

_NATIVE_MEMBERS = frozenset({"binding", "_linkedBinding", "dlopen"})
_GLOBALS = frozenset({"globalThis", "global"})
_CODE = frozenset({"eval", "Function"})
_GUARDED = frozenset({"require", "module", "process", "createRequire", *_GLOBALS, *_CODE})
# What a Module object (module, require.main, process.mainModule) may be used for.
_MODULE_MEMBERS = frozenset({"exports", "id", "filename", "loaded", "path", "paths", "require"})
# The module system's internals: each loads or compiles code past the checks.
_INTERNALS = frozenset({"_load", "_compile", "_resolveFilename", "_extensions", "_cache"})
# Keys that destructuring may not take out of any object.
_KEYS = frozenset(
    {
        "require", "module", "process", "mainModule", "constructor", "createRequire",
        *_NATIVE_MEMBERS, *_INTERNALS, *_GLOBALS, *_CODE,
    }
)  # fmt: skip
# Builtin modules that are a guarded object: `const process = require("process")` is process.
_BUILTIN_OBJECTS = frozenset({"process"})


def check_javascript(code: str, rules: Validation) -> list[ValidationIssue]:
    """Return the findings of the JavaScript rules for ``code``."""
    root = parse("javascript", code)
    found = syntax_warning(root, "JavaScript", "Node.js")
    modules = rules.javascript.forbidden_modules
    for node in walk(root) if modules else ():
        found.extend(_check(node, modules))
    return found


def _check(node: Node, modules: tuple[str, ...]) -> list[ValidationIssue]:
    kind = node.type
    if kind in {"import_statement", "export_statement"}:
        source = node.child_by_field_name("source")
        return _module_name(source, modules, node) if source else []
    if kind == "call_expression":
        return _call(node, modules)
    if kind in {"identifier", "shorthand_property_identifier"}:
        name = identifier_name(node)
        guarded = name in _GUARDED and is_reference(node) and not shadowed(node, name)
        return _reference(node, name) if guarded else []
    if kind in {"member_expression", "subscript_expression"}:
        return _member(node)
    if kind == "object_pattern":
        return _pattern(node)
    return []


# --------------------------------------------------------------------------- module loading


def _call(node: Node, modules: tuple[str, ...]) -> list[ValidationIssue]:
    func = node.child_by_field_name("function")
    args = node.child_by_field_name("arguments")
    if func is None or args is None or not loader(func):
        return []
    first = next((a for a in args.named_children if a.type != "comment"), None)
    return _module_name(first, modules, node) if first else []


def _module_name(node: Node, modules: tuple[str, ...], statement: Node) -> list[ValidationIssue]:
    value = string_value(node)
    if value is None:
        message = (
            f"a module name computed at run time ({snippet(node)}) cannot be checked "
            "against the policy's javascript.forbidden_modules, so it is refused"
        )
        return [error("dynamic_import", line(node), message)]
    if value.startswith("data:"):
        message = (
            f"loading {snippet(node)} runs the code written in the URL, which the module "
            "checks cannot see, so it is refused"
        )
        return [error("dynamic_code", line(node), message)]
    name = value.removeprefix("node:")
    if name in _BUILTIN_OBJECTS and not _bound_as_itself(statement, name):
        message = (
            f"loading module {value!r} under another name hands on the {name} object, whose "
            f"members the checks follow only as `{name}`; bind it as `{name}` or take plain keys"
        )
        return [error("module_alias", line(node), message)]
    if name == "module" and not _only_create_require(statement):
        message = (
            f"loading module {value!r} reaches the module system itself (Module._load, "
            "_compile), which loads any module past the checks, so it is refused; "
            'only `import { createRequire } from "module"` is allowed'
        )
        return [error("module_alias", line(node), message)]
    entry = match(name, modules, "/")
    if entry is None:
        return []
    why = covered(name, entry, "javascript.forbidden_modules")
    message = f"loading module {value!r} is forbidden by the policy ({why})"
    return [error("forbidden_module", line(node), message)]


def _bound_as_itself(statement: Node, name: str) -> bool:
    """Tell whether ``process`` is loaded as ``process``, or destructured by plain keys."""
    if statement.type == "import_statement":
        return _imported_as_itself(statement, name)
    parent, used = user_of(statement)
    if parent is None or parent.type != "variable_declarator":
        return False
    target = parent.child_by_field_name("name")
    if target is not None and target.type == "object_pattern":
        return not any(c.type == "rest_pattern" for c in target.named_children)
    return is_identifier(target, name) and parent.child_by_field_name("value") == used


def _imported_as_itself(statement: Node, name: str) -> bool:
    """``import process from "process"`` or ``import { env } from "process"``, nothing else."""
    clause = next((c for c in statement.named_children if c.type == "import_clause"), None)
    parts = clause.named_children if clause is not None else []
    default = [p for p in parts if p.type == "identifier"]
    named = [p for p in parts if p.type == "named_imports"]
    if len(default) + len(named) != len(parts) or not all(is_identifier(d, name) for d in default):
        return False  # import * as p, import p from
    keys = {text(s.child_by_field_name("name") or s) for n in named for s in n.named_children}
    return not keys & _KEYS


def _only_create_require(statement: Node) -> bool:
    """Tell whether ``import ... from "module"`` takes createRequire (or nothing) only."""
    if statement.type != "import_statement":
        return False
    clause = next((c for c in statement.named_children if c.type == "import_clause"), None)
    if clause is None:
        return True  # import "module": loads it for its side effects only
    named = clause.named_children
    specifiers = [s for n in named if n.type == "named_imports" for s in n.named_children]
    names = {text(s.child_by_field_name("name") or s) for s in specifiers}
    return len(named) == 1 and named[0].type == "named_imports" and names <= {"createRequire"}


# --------------------------------------------------------------------------- guarded names


def _reference(node: Node, name: str) -> list[ValidationIssue]:
    """Check one use of a guarded name (or of ``globalThis.name``): only plain uses pass."""
    parent, used = user_of(node)
    if typeof(parent) or (name == "Function" and compared(parent)):
        return []  # typeof require, x instanceof Function
    handler = _HANDLERS.get(name)
    if handler is not None:
        return handler(used, parent, name)
    return [_dynamic_code(node, f"{name} runs a string as code")]


def _global(used: Node, parent: Node | None, name: str) -> list[ValidationIssue]:
    """``globalThis.process`` is ``process``; any other use of the global object hides names."""
    if not is_object_of(parent, used) or parent is None:
        return [_alias(used, f"the global object {name!r} is handed on as a value")]
    _, key = member_key(parent)
    if key is None:
        return [_dynamic_call(parent, name)]
    return _reference(parent, key) if key in _GUARDED else []


def _require(used: Node, parent: Node | None, name: str) -> list[ValidationIssue]:
    if is_callee(parent, used):
        return []  # require("x"): the loader check reads the name
    if is_object_of(parent, used) and parent is not None:
        _, key = member_key(parent)
        if key == "resolve":
            return []
        if key == "main":
            return _module_object(parent, "require.main")
    return [_alias(used, f"{name} is handed on or used as a value")]


def _module(used: Node, parent: Node | None, name: str) -> list[ValidationIssue]:
    del parent
    return _module_object(used, name)


def _module_object(node: Node, name: str) -> list[ValidationIssue]:
    """A Module object may be compared, give its exports and paths, and require literals."""
    parent, used = user_of(node)
    if compared(parent) or typeof(parent):
        return []
    if is_object_of(parent, used) and parent is not None:
        _, key = member_key(parent)
        grand, member = user_of(parent)
        if key in _MODULE_MEMBERS and (key != "require" or is_callee(grand, member)):
            return []
    message = (
        f"{name} is used beyond its exports and paths: it reaches the module system (its "
        "constructor's _load and _compile, its parent and children)"
    )
    return [_alias(used, message)]


def _process(used: Node, parent: Node | None, name: str) -> list[ValidationIssue]:
    if is_object_of(parent, used) and parent is not None:
        return _process_member(parent)
    destructured = parent is not None and parent.type == "variable_declarator"
    pattern = parent.child_by_field_name("name") if destructured and parent else None
    keyed = pattern is not None and pattern.type == "object_pattern"
    if keyed and pattern and not any(c.type == "rest_pattern" for c in pattern.named_children):
        return []  # const {env, argv} = process: the pattern's keys are checked
    return [_alias(used, f"{name} is handed on or taken apart")]


def _process_member(member: Node) -> list[ValidationIssue]:
    _, key = member_key(member)
    if key is None:
        return [_dynamic_call(member, "process")]
    if key in _NATIVE_MEMBERS:
        message = (
            f"process.{key} reaches Node's native internals around the module system, so "
            "the policy refuses it (javascript.forbidden_modules is set)"
        )
        return [error("forbidden_module", line(member), message)]
    return _module_object(member, "process.mainModule") if key == "mainModule" else []


def _create_require(used: Node, parent: Node | None, name: str = "") -> list[ValidationIssue]:
    """``const require = createRequire(...)`` keeps the loader's name, so its calls are read."""
    grand = parent.parent if parent is not None else None
    target = grand.child_by_field_name("name") if grand is not None else None
    declared = grand is not None and grand.type == "variable_declarator"
    named = (
        target is not None and target.type == "identifier" and identifier_name(target) == "require"
    )
    if is_callee(parent, used) and declared and named:
        return []
    del name
    return [_alias(used, "createRequire makes a loader under a name other than require")]


_Handler = Callable[[Node, Node | None, str], list[ValidationIssue]]
_HANDLERS: dict[str, _Handler] = {
    "globalThis": _global,
    "global": _global,
    "require": _require,
    "module": _module,
    "process": _process,
    "createRequire": _create_require,
}


# --------------------------------------------------------------------------- members, patterns


def _member(node: Node) -> list[ValidationIssue]:
    obj, key = member_key(node)
    if key is None or obj is None:
        return []
    parent, used = user_of(node)
    if key == "constructor":
        return _constructor(node, used, parent)
    if key in _INTERNALS:
        if key == "_compile":
            return [_dynamic_code(node, "_compile compiles a string as a module")]
        return [_alias(node, f"{key} is the module system's internal loader")]
    return _loader_member(node, key, used, parent)


def _loader_member(node: Node, key: str, used: Node, parent: Node | None) -> list[ValidationIssue]:
    """``x.require`` must be called; ``x.createRequire`` must make ``const require``."""
    if key == "require" and not is_callee(parent, used):
        return [_alias(node, "require is handed on or used as a value")]
    if key == "createRequire":
        return _create_require(used, parent)
    return []


def _constructor(node: Node, used: Node, parent: Node | None) -> list[ValidationIssue]:
    """``x.constructor`` may be named or compared; called, it may be Function (or Module)."""
    if compared(parent):
        return []
    if is_object_of(parent, used) and parent is not None:
        _, key = member_key(parent)
        if key == "name":
            return []
    return [
        _dynamic_code(node, "a constructor reached this way may be Function, which runs strings")
    ]


def _pattern(node: Node) -> list[ValidationIssue]:
    """Destructuring may not take the loader, process or internals out of any object."""
    found: list[ValidationIssue] = []
    for child in node.named_children:
        key_node = child.child_by_field_name("key") if child.type == "pair_pattern" else child
        if key_node is None or child.type not in {
            "pair_pattern",
            "shorthand_property_identifier_pattern",
        }:
            continue
        if key_node.type == "computed_property_name":
            found.append(_dynamic_call(child, "a destructured object"))
            continue
        key = key_name(key_node)
        if key in _KEYS:
            found.append(_alias(child, f"destructuring {key!r} takes it out of its object"))
    return found


# --------------------------------------------------------------------------- findings


def _alias(node: Node, what: str) -> ValidationIssue:
    why = (
        ", so what it loads or reaches cannot be checked against javascript.forbidden_modules; "
        "it is refused"
    )
    return refused("module_alias", node, what, why)


def _dynamic_call(node: Node, owner: str) -> ValidationIssue:
    message = (
        f"a member of {owner} reached by a name computed at run time ({snippet(node)}) may be "
        "the loader or a native hook, which cannot be checked, so it is refused"
    )
    return error("dynamic_call", line(node), message)


def _dynamic_code(node: Node, what: str) -> ValidationIssue:
    why = (
        "; code built at run time can load any module, past javascript.forbidden_modules, so it "
        "is refused"
    )
    return refused("dynamic_code", node, what, why)
