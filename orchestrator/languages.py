"""The languages we run: names, aliases, images, and how parameters reach the code.

Parameters always travel as data, never spliced into source text. The runner in the image writes
a language's *parameters blob* to the interpreter's fd 3, and the image's bootstrap turns it into:

- python: a global dict ``parameters`` (and the ``json`` module, without an import);
- javascript: a global object ``parameters``;
- bash: ``PARAMETERS`` (the JSON text) and ``PARAM_<KEY>`` (the key upper-cased) for each
  top-level scalar whose key is an identifier; strings as they are, other scalars as JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from orchestrator.errors import RequestError, UnknownLanguageError

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


@dataclass(frozen=True)
class Language:
    """One language we run.

    Attributes:
        name: the canonical name.
        aliases: other names accepted (case-insensitive).
        image: the image repository's last part (``athena-sandbox/<image>``).
        accepts_nul: whether source text may contain NUL characters.
        parameters_blob: encodes parameters for the image's bootstrap (fd 3).
        takes_guard: its bootstrap reads ``{"parameters": ..., "guard": ...}`` and installs
            the run-time policy layer (:mod:`orchestrator.guard`); otherwise the blob is the
            parameters alone.
    """

    name: str
    aliases: tuple[str, ...]
    image: str
    accepts_nul: bool
    parameters_blob: Callable[[Mapping[str, JsonValue]], bytes]
    takes_guard: bool = False

    def request_blob(
        self, parameters: Mapping[str, JsonValue], guard: Mapping[str, Any] | None
    ) -> bytes:
        """What the bootstrap reads on fd 3 (or from its parameters file) for one run."""
        if not self.takes_guard:
            return self.parameters_blob(parameters)
        envelope = {"parameters": parameters, "guard": guard}
        return json.dumps(envelope, ensure_ascii=False).encode()


LANGUAGES: tuple[Language, ...] = (
    Language("python", ("py", "python3"), "python", False, _json_blob, takes_guard=True),
    # JavaScript source may hold NUL in string literals; Node reads it as text.
    Language("javascript", ("js", "node", "nodejs"), "javascript", True, _json_blob, True),
    Language("bash", ("sh", "shell"), "bash", accepts_nul=False, parameters_blob=_bash_blob),
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
