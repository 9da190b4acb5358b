r"""What JavaScript names and members are, read from tree-sitter nodes: the checks' vocabulary.

Identifiers are read as JavaScript reads them (``\u0065val`` is ``eval``); members as the key
they name when it is written plainly (``a.b``, ``a["b"]``); a name is a reference unless it is
being bound; and a guarded name is *shadowed* where the code declares it itself
(``function f(process) {...}``), so it is the user's own there.
"""

from __future__ import annotations

import re

import tree_sitter

from orchestrator.validator.common import text, walk

Node = tree_sitter.Node

_COMPARISONS = frozenset({"===", "==", "!==", "!=", "instanceof"})
_ESCAPE = re.compile(r"\\u\{([0-9a-fA-F]+)\}|\\u([0-9a-fA-F]{4})")
# Where an identifier is a name being bound, not a reference: (parent type, field or None).
_BINDINGS = frozenset(
    {
        ("variable_declarator", "name"), ("function_declaration", "name"),
        ("function_expression", "name"), ("generator_function_declaration", "name"),
        ("class_declaration", "name"), ("class", "name"), ("arrow_function", "parameter"),
        ("catch_clause", "parameter"), ("assignment_pattern", "left"),
        ("formal_parameters", None), ("import_specifier", None), ("namespace_import", None),
        ("import_clause", None), ("array_pattern", None), ("rest_pattern", None),
        ("pair_pattern", "value"), ("export_specifier", None), ("labeled_statement", "label"),
        ("for_in_statement", "left"),
    }
)  # fmt: skip
_FUNCTIONS = frozenset(
    {
        "function_declaration", "function_expression", "arrow_function", "method_definition",
        "generator_function_declaration", "generator_function",
    }
)  # fmt: skip
_NAMED_DECLARATIONS = frozenset(
    {"function_declaration", "generator_function_declaration", "class_declaration"}
)


def identifier_name(node: Node) -> str:
    r"""Return an identifier as JavaScript reads it: ``\u0065val`` is ``eval``."""
    raw = text(node)
    if "\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), raw)


def string_value(node: Node) -> str | None:
    """Return a string literal's value; None for expressions, escapes and substitutions."""
    parts = node.named_children
    if node.type not in {"string", "template_string"} or any(
        p.type != "string_fragment" for p in parts
    ):
        return None
    return "".join(text(p) for p in parts)


def key_name(node: Node) -> str | None:
    """Return the name a member expression or a pattern reads, when it is written plainly."""
    if node.type in {"property_identifier", "identifier", "shorthand_property_identifier_pattern"}:
        return identifier_name(node)
    if node.type == "private_property_identifier":
        return None
    return string_value(node)


def member_key(node: Node) -> tuple[Node | None, str | None]:
    """Return the object of ``a.b`` / ``a["b"]`` and the key (None: computed)."""
    obj = node.child_by_field_name("object")
    prop = node.child_by_field_name("property")
    if prop is not None:
        return obj, key_name(prop)
    index = node.child_by_field_name("index")
    return obj, string_value(index) if index is not None else None


def user_of(node: Node) -> tuple[Node | None, Node]:
    """Return the parent that uses a node's value (past parentheses) and the node it uses."""
    parent = node.parent
    while parent is not None and parent.type == "parenthesized_expression":
        node, parent = parent, parent.parent
    return parent, node


def _field(parent: Node, node: Node) -> str | None:
    for index, child in enumerate(parent.children):
        if child == node:
            return parent.field_name_for_child(index)
    return None


def is_reference(node: Node) -> bool:
    """Tell whether an identifier is read (a reference), not a name being bound."""
    parent = node.parent
    if parent is None:
        return True
    field = _field(parent, node)
    return (parent.type, field) not in _BINDINGS and (parent.type, None) not in _BINDINGS


def is_object_of(parent: Node | None, node: Node) -> bool:
    """Tell whether ``parent`` is ``node.x`` or ``node[x]``."""
    return (
        parent is not None
        and parent.type in {"member_expression", "subscript_expression"}
        and parent.child_by_field_name("object") == node
    )


def is_callee(parent: Node | None, node: Node) -> bool:
    """Tell whether ``parent`` is ``node(...)`` or ``new node(...)``."""
    return (
        parent is not None
        and parent.type in {"call_expression", "new_expression"}
        and (parent.child_by_field_name("function") or parent.child_by_field_name("constructor"))
        == node
    )


def _operator(node: Node | None) -> str | None:
    operator = node.child_by_field_name("operator") if node is not None else None
    return text(operator) if operator is not None else None


def compared(parent: Node | None) -> bool:
    """Tell whether ``parent`` compares its operands (``===``, ``instanceof``...)."""
    return (
        parent is not None
        and parent.type == "binary_expression"
        and (_operator(parent) in _COMPARISONS)
    )


def typeof(parent: Node | None) -> bool:
    """Tell whether ``parent`` is ``typeof`` of its operand."""
    return (
        parent is not None and parent.type == "unary_expression" and _operator(parent) == "typeof"
    )


def loader(func: Node) -> bool:
    """Tell whether a callee loads a module: ``import()``, ``require``, ``module.require``."""
    if func.type == "member_expression":
        func = func.child_by_field_name("property") or func
    names = {"identifier", "property_identifier"}  # never decode the text of a whole function
    return func.type == "import" or (func.type in names and identifier_name(func) == "require")


def shadowed(node: Node, name: str) -> bool:
    """Tell whether the code declares ``name`` itself in a scope around ``node``.

    ``function f(process) {...}`` or ``const module = {...}`` make the name the user's own.
    Binding the real object to its own name (``const process = require("process")``) does
    not count, and binding it to any name from a guarded value is refused where it happens.
    """
    scope = node.parent
    while scope is not None:
        if scope.type in _FUNCTIONS and _declares_parameter(scope, name):
            return True
        if scope.type == "catch_clause" and is_identifier(
            scope.child_by_field_name("parameter"), name
        ):
            return True
        if scope.type == "for_in_statement" and is_identifier(
            scope.child_by_field_name("left"), name
        ):
            return True
        if any(_declares(child, name) for child in scope.named_children):
            return True
        scope = scope.parent
    return False


def is_identifier(node: Node | None, name: str) -> bool:
    """Tell whether ``node`` is the identifier ``name``."""
    return node is not None and node.type == "identifier" and identifier_name(node) == name


def _declares_parameter(function: Node, name: str) -> bool:
    params = function.child_by_field_name("parameters") or function.child_by_field_name("parameter")
    if params is None:
        return False
    return any(
        n.type in {"identifier", "shorthand_property_identifier_pattern"}
        and identifier_name(n) == name
        and not (n.type == "identifier" and is_reference(n))
        for n in walk(params)
    )


def _declares(statement: Node, name: str) -> bool:
    """Tell whether a statement declares ``name`` (not as the builtin object it is)."""
    if statement.type == "export_statement":
        statement = statement.child_by_field_name("declaration") or statement
    if statement.type in _NAMED_DECLARATIONS:
        return is_identifier(statement.child_by_field_name("name"), name)
    if statement.type not in {"lexical_declaration", "variable_declaration"}:
        return False
    for declarator in statement.named_children:
        target = declarator.child_by_field_name("name")
        value = declarator.child_by_field_name("value")
        if is_identifier(target, name) and not (value is not None and _loads(value, name)):
            return True
    return False


def _loads(value: Node, name: str) -> bool:
    """Tell whether ``value`` is ``require("name")`` (or ``node:name``)."""
    func = value.child_by_field_name("function") if value.type == "call_expression" else None
    args = value.child_by_field_name("arguments") if func is not None else None
    first = args.named_children[0] if args is not None and args.named_children else None
    loaded = string_value(first) if first is not None else None
    return bool(func is not None and loader(func) and loaded in {name, f"node:{name}"})
