"""The languages we run: everything a language is, in one registry entry each.

A :class:`Language` owns its code file's name, the interpreter on the host, its bootstrap file
(``images/<name>/<boot>``), the command line that runs the bootstrap on the code, how its
parameters are encoded, its run-time guard, its validator and its image folder. Backends, the
validator and the tests iterate :data:`LANGUAGES` and switch on no language's name: adding a
language is one entry here, one ``images/<name>/`` folder (a ``Dockerfile`` and the bootstrap)
and its validator module (``tests/unit/test_language_registry.py`` checks all three).

Parameters always travel as data, never spliced into source text. The runner in the image writes
a language's *parameters blob* to the interpreter's fd 3 (outside a container, the file named by
``ATHENA_PARAMS_FILE``), and the image's bootstrap turns it into:

- python: a global dict ``parameters`` (and the ``json`` module, without an import);
- javascript: a global object ``parameters``;
- bash: ``PARAMETERS`` (the JSON text) and ``PARAM_<KEY>`` (the key upper-cased) for each
  top-level scalar whose key is an identifier; strings as they are, other scalars as JSON;
- ruby: a Hash ``parameters`` at the top level and ``$parameters`` everywhere (and ``JSON``,
  without a ``require``).
"""

from __future__ import annotations

import importlib
import json
import marshal
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from orchestrator.errors import RequestError, UnknownLanguageError
from orchestrator.guard import javascript_guard, python_guard, ruby_guard

if TYPE_CHECKING:
    from orchestrator.models import ValidationIssue
    from orchestrator.policy import Policy, Validation

Checker = Callable[[str, "Validation"], list["ValidationIssue"]]
GuardBuilder = Callable[["Policy"], dict[str, Any] | None]

# Linux refuses a single environment string longer than this (MAX_ARG_STRLEN), NUL included.
_ENV_STRING_MAX = 128 * 1024
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" would allow a final "\n"


def _json_blob(parameters: Mapping[str, JsonValue]) -> bytes:
    return json.dumps(parameters, ensure_ascii=False).encode()


def _env_entry(name: str, value: str) -> bytes:
    entry = f"{name}={value}"
    if "\x00" in entry:
        raise RequestError(
            f"bash parameter {name} contains a NUL byte, which an environment variable cannot "
            "hold: read it from $PARAMETERS (JSON, where NUL is escaped) or drop it"
        )
    data = entry.encode()
    if len(data) + 1 > _ENV_STRING_MAX:
        raise RequestError(
            f"bash parameter {name} is {len(data)} bytes; Linux limits one environment "
            f"variable to {_ENV_STRING_MAX - 1} bytes. Pass less data to bash code."
        )
    return data + b"\x00"


def bash_environment(parameters: Mapping[str, JsonValue]) -> dict[str, str]:
    """The environment variables bash code gets: PARAMETERS and PARAM_<KEY> per scalar.

    Raises:
        RequestError: two keys collide once upper-cased, a value holds NUL, or one variable
            is over Linux's limit for a single environment string.
    """
    env = {"PARAMETERS": json.dumps(parameters, ensure_ascii=False)}
    seen: dict[str, str] = {}
    for key, value in parameters.items():
        if not _IDENTIFIER.fullmatch(key) or isinstance(value, dict | list):
            continue
        name = f"PARAM_{key.upper()}"
        if name in seen:
            raise RequestError(
                f"parameters {seen[name]!r} and {key!r} both become {name} in bash; "
                "rename one of them"
            )
        seen[name] = key
        env[name] = value if isinstance(value, str) else json.dumps(value)
    for name, text in env.items():
        _env_entry(name, text)  # checks NUL and size
    return env


def _bash_blob(parameters: Mapping[str, JsonValue]) -> bytes:
    return b"".join(_env_entry(name, text) for name, text in bash_environment(parameters).items())


def images_dir() -> Path:
    """Return the directory of the image definitions (installed copy or source checkout)."""
    package = Path(__file__).resolve().parent
    installed = package / "_shipped" / "images"
    return installed if installed.is_dir() else package.parent / "images"


@dataclass(frozen=True)
class Language:
    """One language we run, and everything the backends need to know to run it.

    Attributes:
        name: the canonical name (lower case); also the image folder ``images/<name>/`` and
            the image ``athena-sandbox/<name>``.
        aliases: other names accepted (case-insensitive).
        code_file: the name the code is written under (``/workspace/<code_file>``).
        interpreter: the interpreter's path on the host (the srt and inprocess modes).
        boot: the bootstrap's file name in the image folder (``/opt/athena/<boot>`` in the
            image): it reads the parameters blob, then runs the code.
        command: the command line that runs the bootstrap on the code, with the placeholders
            ``{interpreter}``, ``{boot}`` and ``{code}``; the image's ``CMD`` is the same.
        parameters_blob: encodes parameters for the bootstrap (fd 3 or ``ATHENA_PARAMS_FILE``).
        validator: ``module:function`` of its static checks, under ``orchestrator.validator``.
        grammar: the tree-sitter grammar module its validator parses with (None: its own
            parser, as ``ast`` for Python).
        accepts_nul: whether source text may contain NUL characters.
        guard: builds the run-time guard from a policy (:mod:`orchestrator.guard`): what the
            bootstrap installs in the interpreter and the runner refuses in the kernel; the
            bootstrap then reads ``{"parameters": ..., "guard": ...}``. None: no guard, and the
            blob is the parameters alone.
        restricted: RestrictedPython can run it (the restricted mode).
        forks_host: the inprocess mode runs it in a fork of this Python process (no
            interpreter of its own).
        sessions: its bootstrap can serve a session (calls that share one interpreter).
        session_command: the container command of a session, when it is not the image's
            ``CMD`` (None: the image's; its bootstrap then reads ``ATHENA_SESSION``).
        figures: its bootstrap saves the figures a run leaves open (matplotlib, in the python
            image): only then does a request ask the runner to send them back.
        compiled_boot: the image runs the bootstrap compiled (``<boot>c``, a .pyc): a script
            is compiled at every start, a .pyc is not.
        marshal_envelope: the envelope goes in Python's ``marshal`` form (built in, so the
            bootstrap reads it without importing json, which costs milliseconds of each start);
            otherwise as JSON.
    """

    name: str
    aliases: tuple[str, ...]
    code_file: str
    interpreter: str
    boot: str
    command: tuple[str, ...]
    parameters_blob: Callable[[Mapping[str, JsonValue]], bytes]
    validator: str
    grammar: str | None = None
    accepts_nul: bool = False
    guard: GuardBuilder | None = None
    restricted: bool = False
    forks_host: bool = False
    sessions: bool = False
    session_command: tuple[str, ...] | None = None
    marshal_envelope: bool = False
    compiled_boot: bool = False
    figures: bool = False

    @property
    def image_boot(self) -> str:
        """The bootstrap's file name in the image (``/opt/athena/<image_boot>``)."""
        return self.boot + "c" if self.compiled_boot else self.boot

    @property
    def image(self) -> str:
        """The image folder and repository's last part (``athena-sandbox/<image>``)."""
        return self.name

    @property
    def takes_guard(self) -> bool:
        """Whether its bootstrap reads the envelope with a run-time guard."""
        return self.guard is not None

    def boot_path(self) -> Path:
        """The bootstrap file on this host (read by the srt and inprocess modes)."""
        return images_dir() / self.image / self.boot

    def argv(self, code: str | Path, boot: str | Path, interpreter: str | None = None) -> list[str]:
        """The command line running ``boot`` on ``code`` (with the host's interpreter)."""
        values = {
            "interpreter": interpreter or self.interpreter,
            "boot": str(boot),
            "code": str(code),
        }
        return [part.format_map(values) for part in self.command]

    def check(self, code: str, rules: Validation) -> list[ValidationIssue]:
        """Run its validator on ``code`` (imported on first use: validators import models)."""
        module, function = self.validator.split(":")
        checker: Checker = getattr(importlib.import_module(module), function)
        return checker(code, rules)

    def runtime_guard(self, policy: Policy) -> dict[str, Any] | None:
        """The guard a run under ``policy`` carries, or None (see :mod:`orchestrator.guard`)."""
        if self.guard is None or not policy.validation.enforce:
            return None
        return self.guard(policy)

    def request_blob(
        self,
        parameters: Mapping[str, JsonValue],
        guard: Mapping[str, Any] | None,
        figures: str | None = None,
        requirements: Mapping[str, Any] | None = None,
    ) -> bytes:
        """What the bootstrap reads on fd 3 (or from its parameters file) for one run.

        ``figures``: where the Python bootstrap saves the figures a call leaves open (None:
        no capture); other bootstraps ignore it. ``requirements``: what the bootstrap installs
        before the code starts (:func:`orchestrator.packages.install_plan`; None: nothing).
        """
        if not self.takes_guard:
            return self.parameters_blob(parameters)
        envelope: dict[str, Any] = {"parameters": parameters, "guard": guard}
        if figures is not None:
            envelope["figures"] = figures
        if requirements is not None:
            envelope["requirements"] = requirements
        text = json.dumps(envelope, ensure_ascii=False)
        if self.marshal_envelope:  # the same values as the JSON would give (lists, not tuples)
            return marshal.dumps(json.loads(text), 4)
        return text.encode()


_BOOT_ON_CODE = ("{interpreter}", "{boot}", "{code}")
LANGUAGES: tuple[Language, ...] = (
    Language(
        "python",
        ("py", "python3"),
        code_file="main.py",
        interpreter="/usr/bin/python3",
        boot="pyboot.py",
        command=("{interpreter}", "-I", "-u", "{boot}", "{code}"),
        parameters_blob=_json_blob,
        validator="orchestrator.validator.python:check_python",
        guard=python_guard,
        restricted=True,
        forks_host=True,
        sessions=True,
        marshal_envelope=True,
        compiled_boot=True,
        figures=True,
    ),
    Language(
        "javascript",
        ("js", "node", "nodejs"),
        code_file="main.js",
        interpreter="/usr/bin/node",
        boot="jsboot.js",
        # --experimental-vm-modules: the guard checks import() (jsboot.js).
        command=("{interpreter}", "--experimental-vm-modules", "--require", "{boot}", "{code}"),
        parameters_blob=_json_blob,
        validator="orchestrator.validator.javascript:check_javascript",
        grammar="tree_sitter_javascript",
        accepts_nul=True,  # JavaScript source may hold NUL in string literals
        guard=javascript_guard,
        sessions=True,
        # The bootstrap is the main module of a session: it runs each call's code itself.
        session_command=(
            "node",
            "--experimental-vm-modules",
            "/opt/athena/jsboot.js",
            "/workspace/main.js",
        ),
    ),
    Language(
        "bash",
        ("sh", "shell"),
        code_file="main.sh",
        interpreter="/bin/bash",
        boot="shboot.sh",
        command=_BOOT_ON_CODE,
        parameters_blob=_bash_blob,
        validator="orchestrator.validator.bash:check_bash",
        grammar="tree_sitter_bash",
        sessions=True,
    ),
    Language(
        "ruby",
        ("rb",),
        code_file="main.rb",
        interpreter="/usr/bin/ruby",
        boot="rbboot.rb",
        command=_BOOT_ON_CODE,
        parameters_blob=_json_blob,
        validator="orchestrator.validator.ruby:check_ruby",
        grammar="tree_sitter_ruby",
        guard=ruby_guard,  # the kernel's refusals, and rbboot.rb's of process creation
    ),
)
_BY_NAME = {n: lang for lang in LANGUAGES for n in (lang.name, *lang.aliases)}


def get_language(name: str) -> Language:
    """Return the language for a name or alias, case-insensitive.

    Raises:
        UnknownLanguageError: the name is not a language we run.
    """
    if not isinstance(name, str):
        raise UnknownLanguageError(f"language must be a string, not {type(name).__name__}")
    language = _BY_NAME.get(name.strip().lower())
    if language is None:
        known = ", ".join(f"{lang.name} ({'/'.join(lang.aliases)})" for lang in LANGUAGES)
        raise UnknownLanguageError(f"unknown language {name!r}: use one of {known}")
    return language
