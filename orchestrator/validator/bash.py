r"""bash: tree-sitter checks of the commands a script runs.

For bash the static check is advice and the container is the boundary: a script can copy a
binary under another name, write a file and run it, or ask any interpreter to run a string, and
no reading of the text can follow all of that. What the check does is refuse, early and
readably, the commands ``bash.forbidden_commands`` lists and the places where a command's name
is decided at run time, so it cannot be checked:

- names computed (``$cmd``, ``${x}``, ``"$(echo curl)"``, backticks) or globbed (``w*et``,
  ``/bin/c[u]rl``, brace expansions) are refused as ``computed_command``; literal names are
  checked however they are written (``/usr/bin/curl``, ``'cu'rl``, ``c\url``, ``$'\x63url'``);
- the command behind a wrapper is checked too: ``env``, ``command``, ``builtin``, ``exec``,
  ``xargs``, ``nohup``, ``timeout``, ``nice``, ``busybox``, ``find -exec`` and others;
- strings run as scripts are parsed and checked when they are literal and refused when computed:
  ``bash -c '...'``, ``sh -c``, ``eval``, ``trap``, ``alias``, ``env -S``, here-strings and
  here-documents fed to a shell; a shell reading its script from a pipe, ``source`` or ``.`` of
  a computed path or of ``/dev/stdin`` are refused;
- redirections to ``/dev/tcp`` and ``/dev/udp`` open connections and are refused.

Variables as arguments (``echo "$x"``, ``grep "$pat" file``) and substitutions as arguments
(``echo "$(date)"``) are ordinary bash and pass. Rules: ``forbidden_command``,
``computed_command``, and ``syntax`` (a warning).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import tree_sitter

from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation
from orchestrator.validator.common import (
    error,
    line,
    parse,
    shorten,
    snippet,
    syntax_warning,
    text,
    walk,
)

Node = tree_sitter.Node


@dataclass(frozen=True)
class _Wrapper:
    """A command that runs another: its options that take a value, and where the command is."""

    valued: frozenset[str] = frozenset()
    operands: int = 0  # operands before the command (timeout's duration)
    scripts: frozenset[str] = frozenset()  # options whose value is a script (flock -c, env -S)
    runs_operand: bool = True  # False: the command is given only through a script option


def _wrapper(valued: str = "", operands: int = 0, scripts: str = "", runs: bool = True) -> _Wrapper:
    return _Wrapper(frozenset(valued.split()), operands, frozenset(scripts.split()), runs)


_WRAPPERS: dict[str, _Wrapper] = {
    "env": _wrapper("-u --unset -C --chdir", scripts="-S --split-string"),
    "exec": _wrapper("-a"),
    "command": _wrapper(),
    "builtin": _wrapper(),
    "nohup": _wrapper(),
    "setsid": _wrapper(),
    "coproc": _wrapper(),
    "unbuffer": _wrapper(),
    "busybox": _wrapper(),
    "time": _wrapper("-f --format -o --output"),
    "timeout": _wrapper("-s --signal -k --kill-after", operands=1),
    "xargs": _wrapper(
        "-a -d -E -I -L -n -P -s --arg-file --delimiter --eof --replace --max-lines "
        "--max-args --max-procs --max-chars"
    ),
    "sudo": _wrapper("-u -g -C -D -h -p -r -t -U -R -T"),
    "doas": _wrapper("-u -C"),
    "nice": _wrapper("-n --adjustment"),
    "ionice": _wrapper("-c --class -n --classdata -p --pid -P --pgid -u --uid"),
    "stdbuf": _wrapper("-i -o -e --input --output --error"),
    "taskset": _wrapper(operands=1),
    "chrt": _wrapper("-T -P -D", operands=1),
    "chroot": _wrapper("--userspec --groups", operands=1),
    "flock": _wrapper("-w --wait --timeout -E --conflict-exit-code", 1, "-c --command"),
    "runuser": _wrapper("-u --user -g --group -G --supp-group -s --shell", scripts="-c --command"),
    "su": _wrapper("-s --shell -g --group -G --supp-group", scripts="-c --command", runs=False),
    "script": _wrapper(
        "-t --timing -E --echo -O --log-out -I --log-in", scripts="-c --command", runs=False
    ),
    "strace": _wrapper("-e -o -p -s -u -E -I -a -b -O -S -P -X"),
    "ltrace": _wrapper("-e -o -p -s -u -n -a -A -D -F -l -x"),
}
_WATCH = _wrapper("-n --interval -d --differences -q --equexit")
_SHELLS = frozenset(
    {
        "sh", "bash", "rbash", "dash", "ash", "zsh", "ksh", "mksh", "posh", "yash", "fish",
        "csh", "tcsh",
    }
)  # fmt: skip
_SOURCES = frozenset({"source", "."})
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
_NETWORK_DEVICES = ("/dev/tcp/", "/dev/udp/")
_STREAMS = ("/dev/", "/proc/")  # /dev/stdin, /dev/fd/0, /proc/self/fd/0: a stream, not a file
_LEADING_BACKSLASH = re.compile(r"^\\(?=\S)", re.MULTILINE)
_PATTERN = re.compile(r"[*?\[\]{}]")
_UNQUOTED_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_DOUBLE_QUOTED_ESCAPE = re.compile(r"\\([$`\"\\\n])")  # in "...", only these are escapes
_ANSI_C = re.compile(
    r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|c.|.)", re.DOTALL
)
_ANSI_C_SIMPLE = dict(zip("abeEfnrtv", "\a\b\x1b\x1b\f\n\r\t\v", strict=True))
_EXPANSIONS = frozenset(
    {"simple_expansion", "expansion", "command_substitution", "arithmetic_expansion"}
)
_MAX_DEPTH = 8  # scripts inside scripts (bash -c "bash -c '...'")


@dataclass(frozen=True)
class _Word:
    """A word as bash would see it, or None when it depends on expansions at run time."""

    value: str | None
    pattern: bool  # unquoted *, ?, [...] or {...}: expanded at run time
    node: Node


def check_bash(code: str, rules: Validation) -> list[ValidationIssue]:
    """Return the findings of the bash rules for ``code``."""
    root = _parse(code)
    found = syntax_warning(root, "bash", "bash")
    commands = rules.bash.forbidden_commands
    if commands:
        found.extend(_BashChecker(frozenset(commands)).check(root))
    return found


def _parse(code: str) -> Node:
    # tree-sitter-bash glues a line that starts with a backslash (`\curl`, which skips aliases)
    # to the previous line's last word; a space in its place parses right and keeps positions.
    return parse("bash", _LEADING_BACKSLASH.sub(" ", code))


# --------------------------------------------------------------------------- words


def _literal(node: Node) -> tuple[str, str] | None:
    """Return (value, shape) of a word: the shape keeps unquoted characters only, else None."""
    kind = node.type
    if kind in {"word", "number"}:
        raw = text(node)
        return _UNQUOTED_ESCAPE.sub(_unescape, raw), _UNQUOTED_ESCAPE.sub("__", raw)
    decode = _QUOTED.get(kind)
    if decode is not None:
        value = decode(text(node))
        return value, "_" * len(value)
    if kind in {"string", "translated_string", "concatenation", "command_name"}:
        parts = [_literal(child) for child in node.named_children]
        if any(p is None for p in parts):
            return None
        return "".join(p[0] for p in parts if p), "".join(p[1] for p in parts if p)
    return None


def _unescape(found: re.Match[str]) -> str:
    """Return the character a backslash escapes; a backslash-newline joins lines."""
    return "" if found.group(1) == "\n" else found.group(1)


def _ansi_c_char(found: re.Match[str]) -> str:
    """Return the character of one ANSI-C escape (x63, 143, n after a backslash)."""
    escape = found.group(1)
    head, rest = escape[0], escape[1:]
    if head in "xuU" and rest:
        return chr(min(int(rest, 16), 0x10FFFF))
    if head.isdigit():
        return chr(int(escape, 8) & 0xFF)
    if head == "c" and rest:
        return chr(ord(rest.upper()) ^ 0x40)
    return _ANSI_C_SIMPLE.get(head, escape)


# Quoted words: their characters are literal, never patterns.
_QUOTED: dict[str, Callable[[str], str]] = {
    "raw_string": lambda raw: raw[1:-1],
    "string_content": lambda raw: _DOUBLE_QUOTED_ESCAPE.sub(_unescape, raw),
    "ansi_c_string": lambda raw: _ANSI_C.sub(_ansi_c_char, raw[2:-1]),
}


def _word(node: Node) -> _Word:
    found = _literal(node)
    if found is None:
        return _Word(None, False, node)
    value, shape = found
    return _Word(value, bool(_PATTERN.search(shape)), node)


def _basename(value: str) -> str:
    return value.rsplit("/", 1)[-1]


def _shown(word: _Word) -> str:
    return shorten(word.value) if word.value is not None else snippet(word.node)


# --------------------------------------------------------------------------- checker


class _BashChecker:
    """The bash rules over one script, or over a script found in another (``bash -c``)."""

    def __init__(self, commands: frozenset[str], offset: int = 0, depth: int = 0) -> None:
        self.commands = commands
        self.offset = offset
        self.depth = depth

    def check(self, root: Node) -> list[ValidationIssue]:
        """Return the findings for every command and redirection under ``root``."""
        found: list[ValidationIssue] = []
        for node in walk(root):
            if node.type == "command":
                found.extend(self._command(node))
            elif node.type == "file_redirect":
                found.extend(self._redirect(node))
        return found

    def _line(self, node: Node) -> int:
        return self.offset + line(node)

    def _command(self, node: Node) -> list[ValidationIssue]:
        name = node.child_by_field_name("name")
        if name is None:
            return []
        arguments = node.children_by_field_name("argument")
        return list(self._chain(node, [_word(n) for n in (name, *arguments)]))

    def _chain(self, command: Node, words: list[_Word]) -> Iterator[ValidationIssue]:
        """Check the command name, then the command each wrapper (env, xargs...) runs."""
        index = 0
        while index < len(words):
            word = words[index]
            yield from self._name(word)
            if word.value is None or word.pattern:
                return
            base, rest = _basename(word.value), words[index + 1 :]
            if base in _SHELLS:
                yield from self._shell(command, word, rest)
                return
            special = {
                "eval": self._eval,
                "trap": self._trap,
                "alias": self._alias,
                "watch": self._watch,
            }
            if base in special or base in _SOURCES:
                yield from special.get(base, self._source)(word, rest)
                return
            if base == "find":
                yield from self._find(command, rest)
                return
            wrapper = _WRAPPERS.get(base)
            if wrapper is None or (base == "command" and rest and rest[0].value in {"-v", "-V"}):
                return  # `command -v curl` only looks curl up
            index, scripts = _after_options(words, index + 1, wrapper)
            for script in scripts:
                yield from self._script(script, f"{base} {_shown(script)}")
            if not wrapper.runs_operand:
                return

    def _name(self, word: _Word) -> Iterator[ValidationIssue]:
        if word.value is None:
            yield self._computed(
                word.node, f"the command name {_shown(word)!r} is computed at run time"
            )
        elif word.pattern:
            what = f"the command name {_shown(word)!r} is a pattern the shell expands at run time"
            yield self._computed(word.node, what)
        elif (name := _basename(word.value)) in self.commands:
            as_written = "" if name == word.value else f" (as {word.value!r})"
            message = (
                f"running {name!r}{as_written} is forbidden by the policy (bash.forbidden_commands)"
            )
            yield error("forbidden_command", self._line(word.node), message)

    def _computed(self, node: Node, what: str) -> ValidationIssue:
        message = (
            f"{what}, so it cannot be checked against bash.forbidden_commands; the policy "
            "refuses it (the container bounds what the script can do, this check only advises)"
        )
        return error("computed_command", self._line(node), message)

    # ----------------------------------------------------------------------- scripts

    def _script(self, word: _Word, what: str) -> Iterator[ValidationIssue]:
        """Check a string that runs as a script: parsed when literal, refused when computed."""
        if word.value is None:
            yield self._computed(word.node, f"{what} runs a script computed at run time")
        else:
            yield from self._nested(word.value, word.node, what)

    def _nested(self, code: str, node: Node, what: str) -> Iterator[ValidationIssue]:
        if self.depth >= _MAX_DEPTH:
            yield self._computed(node, f"{what} nests scripts more deeply than the check follows")
            return
        nested = _BashChecker(self.commands, self._line(node) - 1, self.depth + 1)
        yield from nested.check(_parse(code))

    def _shell(self, command: Node, word: _Word, rest: list[_Word]) -> Iterator[ValidationIssue]:
        """``bash -c STRING``, ``bash FILE`` or ``bash`` reading its script from stdin."""
        index, inline, stdin = 0, False, False
        while index < len(rest) and (option := rest[index].value) and option[0] in "-+":
            index += 1
            if option in {"--", "-"}:
                break
            if option in {"--rcfile", "--init-file"}:
                index += 1
            elif option == "--command":
                inline = True
            elif not option.startswith("--"):
                inline = inline or (option[0] == "-" and "c" in option)
                stdin = stdin or (option[0] == "-" and "s" in option)
                index += option[-1] in "oO"  # -o pipefail, -O extglob
        operand = rest[index] if index < len(rest) else None
        name = word.value or ""
        if inline and operand is not None:
            yield from self._script(operand, f"{name} -c")
        elif operand is not None and not stdin and not inline:
            yield from self._script_file(operand, name)
        elif not inline:
            yield from self._stdin(command, name)

    def _script_file(self, word: _Word, name: str) -> Iterator[ValidationIssue]:
        # A script file's content is not checked (it may be written at run time): advice only.
        if word.value is None:
            yield self._computed(
                word.node, f"{name} runs a script whose path is computed at run time"
            )
        elif word.value.startswith(_STREAMS):
            yield self._computed(word.node, f"{name} reads its script from {word.value!r}")

    def _stdin(self, command: Node, name: str) -> Iterator[ValidationIssue]:
        """A shell without a script reads stdin: here-strings and here-documents are checked."""
        redirects = list(command.children_by_field_name("redirect"))
        statement, parent = command, command.parent
        if parent is not None and parent.type == "redirected_statement":
            redirects += parent.children_by_field_name("redirect")
            statement, parent = parent, parent.parent
        for redirect in redirects:
            yield from self._stdin_redirect(redirect, name)
        if (
            parent is not None
            and parent.type == "pipeline"
            and parent.named_children[0] != statement
        ):
            yield self._computed(command, f"{name} reads its script from a pipe")

    def _stdin_redirect(self, redirect: Node, name: str) -> Iterator[ValidationIssue]:
        what = f"{name} <<"
        if redirect.type == "herestring_redirect":
            body = redirect.named_children[-1] if redirect.named_children else None
            if body is not None:
                yield from self._script(_word(body), f"{name} <<<")
        elif redirect.type == "heredoc_redirect":
            body = next((c for c in redirect.named_children if c.type == "heredoc_body"), None)
            if body is None:
                return
            if any(c.type in _EXPANSIONS for c in body.named_children):
                yield self._computed(body, f"{what} runs a here-document with expansions")
            else:
                yield from self._nested(text(body), body, what)
        elif redirect.type == "file_redirect" and not redirect.child_by_field_name("descriptor"):
            operator = next((text(c) for c in redirect.children if not c.is_named), "")
            target = redirect.child_by_field_name("destination")
            if operator in {"<", "<&"} and target is not None:
                path = _word(target)
                if operator == "<&" or path.value is None or path.value.startswith(_STREAMS):
                    yield self._computed(target, f"{name} reads its script from {_shown(path)!r}")

    def _eval(self, word: _Word, rest: list[_Word]) -> Iterator[ValidationIssue]:
        """``eval ARGS`` joins its arguments and runs them: checked when they are literal."""
        name = _basename(word.value or "eval")
        computed = next((w for w in rest if w.value is None), None)
        if computed is not None:
            yield self._computed(computed.node, f"{name} runs a string built at run time")
        elif rest:
            yield from self._nested(" ".join(w.value or "" for w in rest), word.node, name)

    def _watch(self, word: _Word, rest: list[_Word]) -> Iterator[ValidationIssue]:
        """``watch CMD ARGS`` joins its arguments and runs them with ``sh -c``, as eval does."""
        index, _ = _after_options(rest, 0, _WATCH)
        yield from self._eval(word, rest[index:])

    def _source(self, word: _Word, rest: list[_Word]) -> Iterator[ValidationIssue]:
        if rest:
            yield from self._script_file(rest[0], word.value or "source")

    def _trap(self, word: _Word, rest: list[_Word]) -> Iterator[ValidationIssue]:
        del word
        while rest and rest[0].value in {"-p", "-l", "--"}:
            rest = rest[1:]
        if len(rest) >= 2 and rest[0].value not in {"-", ""}:
            yield from self._script(rest[0], "trap")

    def _alias(self, word: _Word, rest: list[_Word]) -> Iterator[ValidationIssue]:
        del word
        for definition in rest:
            if definition.value is None:
                yield self._computed(
                    definition.node, "alias defines a command computed at run time"
                )
            elif "=" in definition.value:
                yield from self._nested(definition.value.split("=", 1)[1], definition.node, "alias")

    def _find(self, command: Node, rest: list[_Word]) -> Iterator[ValidationIssue]:
        """``find ... -exec CMD ... ;`` runs CMD: check each -exec's command."""
        for index, word in enumerate(rest):
            if word.value in _FIND_EXEC:
                end = next(
                    (j for j in range(index + 1, len(rest)) if rest[j].value in {";", "+"}),
                    len(rest),
                )
                yield from self._chain(command, rest[index + 1 : end])

    # ----------------------------------------------------------------------- redirections

    def _redirect(self, node: Node) -> list[ValidationIssue]:
        targets = (text(n).strip("\"'") for n in node.named_children if n.type != "file_descriptor")
        device = next((t for t in targets if t.startswith(_NETWORK_DEVICES)), None)
        if device is None:
            return []
        message = (
            f"redirection to {shorten(device)!r} opens a network connection, which the policy "
            "refuses (bash.forbidden_commands is set)"
        )
        return [error("forbidden_command", self._line(node), message)]


def _after_options(words: list[_Word], index: int, wrapper: _Wrapper) -> tuple[int, list[_Word]]:
    """Skip a wrapper's options; return where its command is and the scripts options gave."""
    scripts: list[_Word] = []
    while index < len(words) and (word := words[index].value) and word != "--":
        if word.startswith("--"):
            option, attached, value = word.partition("=")
            takes = option in wrapper.valued | wrapper.scripts and not attached
            if option in wrapper.scripts:
                given = (
                    _Word(value, False, words[index].node) if attached else _at(words, index + 1)
                )
                scripts.extend([given] if given else [])
            index += 1 + takes
        elif word[0] == "-" and len(word) > 1:
            index = _short_options(words, index, wrapper, scripts)
        elif "=" in word:
            index += 1  # env's NAME=value
        else:
            break
    index += words[index].value == "--" if index < len(words) else 0
    index += wrapper.operands
    if (after := _at(words, index)) and after.value in wrapper.scripts:  # flock FILE -c CMD
        scripts.extend([given] if (given := _at(words, index + 1)) else [])
        index = len(words)
    return index, scripts


def _short_options(words: list[_Word], index: int, wrapper: _Wrapper, scripts: list[_Word]) -> int:
    """Skip one cluster of short options (``-n1``, ``-qc CMD``, ``-s KILL``)."""
    word = words[index].value or ""
    for position, letter in enumerate(word[1:], 1):
        option = "-" + letter
        if option not in wrapper.valued | wrapper.scripts:
            continue
        attached = word[position + 1 :]
        given = _Word(attached, False, words[index].node) if attached else _at(words, index + 1)
        if option in wrapper.scripts and given is not None:
            scripts.append(given)
        return index + 1 + (not attached)
    return index + 1


def _at(words: list[_Word], index: int) -> _Word | None:
    return words[index] if index < len(words) else None
