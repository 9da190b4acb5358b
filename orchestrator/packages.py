"""Packages a run installs before its code starts (``requirements=``): checks and plan (pure).

``requirements=["requests==2.32.3"]`` (Python, with pip) or ``["lodash"]`` (JavaScript, with
npm) installs those packages in the run's sandbox, from the package index of the settings
(``pip_index_url``, ``npm_registry``), through the egress allowlist proxy, before the code
starts. Three checks, all before anything runs:

- :func:`check_requirements` (a :class:`RequestError`): each entry is one requirement spec and
  nothing else: pip's a PEP 508 name with optional extras and version specifiers, npm's a package
  name with an optional version, range or tag. URLs, paths, git references, markers and options
  (``--index-url=...``, ``-e``) are refused, so an entry cannot point the installer elsewhere;
- :func:`check_requirements_allowed` (a :class:`PolicyError` naming the policy and the key):
  the policy's network is an allowlist holding the index's domains; for JavaScript, the policy
  lets the interpreter start processes (npm runs as a process: where the policy's guard forbids
  processes, the kernel refuses them before the interpreter starts);
- the install itself counts against the call's timeout.

:func:`install_plan` is what the bootstrap receives in the request blob (``"requirements"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from orchestrator.egress_rules import name_verdict
from orchestrator.errors import PolicyError, RequestError

if TYPE_CHECKING:
    from orchestrator.policy import Policy
    from orchestrator.settings import Settings

__all__ = [
    "INSTALLERS",
    "MAX_REQUIREMENTS",
    "check_requirements",
    "check_requirements_allowed",
    "index_domains",
    "install_argv",
    "install_plan",
]

MAX_REQUIREMENTS = 50
"""The most requirement entries a run or a session may have."""
INSTALLERS: dict[str, str] = {"python": "pip", "javascript": "npm"}
"""The languages that take requirements, and the installer of each."""
_MAX_ENTRY_CHARS = 214  # npm's longest package name; ample for a pip spec

# PEP 508 name, optional extras, optional comma-separated version specifiers; nothing else
# (no URL after '@', no marker after ';', no option: an entry must start with a letter or digit).
_PIP_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PIP_VERSION = r"(?:~=|===|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_PIP_RE = re.compile(
    rf"{_PIP_NAME}\s*(?:\[\s*{_PIP_NAME}(?:\s*,\s*{_PIP_NAME})*\s*\])?"
    rf"\s*(?:{_PIP_VERSION}(?:\s*,\s*{_PIP_VERSION})*)?"
)
# npm: an optional @scope/, a lower-case name, then optionally @ and a version, range or tag
# (no ':' so no URL, git+ or file: spec; no '/' after the name so no user/repo shorthand).
_NPM_NAME = r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*"
_NPM_RE = re.compile(rf"(?P<name>{_NPM_NAME})(?:@(?P<range>[A-Za-z0-9.^~<>=*|+ _-]+))?")


def check_requirements(requirements: object, language: str) -> tuple[str, ...]:
    """Return ``requirements`` as a tuple when each entry is one valid spec for ``language``.

    Args:
        requirements: None (no packages) or a list of strings.
        language: the canonical language name of the run.

    Raises:
        RequestError: not a list of strings, more than :data:`MAX_REQUIREMENTS` entries, a
            language without an installer, or an entry that is not a plain requirement spec
            (a URL, a path, a git reference, an option, a marker, a shell word).
    """
    if requirements is None:
        return ()
    if isinstance(requirements, str | bytes) or not isinstance(requirements, Sequence):
        raise RequestError(
            "requirements must be a list of package specs (e.g. ['requests==2.32.3']), "
            f"not {type(requirements).__name__}"
        )
    if not requirements:
        return ()
    installer = INSTALLERS.get(language)
    if installer is None:
        raise RequestError(
            f"requirements are installed for python (pip) and javascript (npm) only, not for "
            f"{language}: install what {language} code needs in a custom image"
        )
    if len(requirements) > MAX_REQUIREMENTS:
        raise RequestError(
            f"{len(requirements)} requirements; at most {MAX_REQUIREMENTS} may be installed "
            "for one run or session"
        )
    return tuple(_check_entry(entry, index, installer) for index, entry in enumerate(requirements))


def _check_entry(entry: object, index: int, installer: str) -> str:
    if not isinstance(entry, str):
        raise RequestError(f"requirements[{index}] must be a string, not {type(entry).__name__}")
    pattern = _PIP_RE if installer == "pip" else _NPM_RE
    text = entry.strip()
    if len(text) > _MAX_ENTRY_CHARS or pattern.fullmatch(text) is None:
        shown = text if len(text) <= 80 else text[:80] + "..."
        raise RequestError(f"requirements[{index}] {shown!r} is not {_EXPECTED[installer]}")
    return text


_EXPECTED = {
    "pip": "a pip requirement: a package name with optional extras and version specifiers "
    "(e.g. 'requests==2.32.3', 'pandas[excel]>=2,<3'); URLs, paths, markers and options "
    "are not accepted",
    "npm": "an npm package: a name with an optional version, range or tag (e.g. 'lodash', "
    "'lodash@4.17.21', '@scope/pkg@^1.2'); URLs, paths, git references and options are "
    "not accepted",
}


def index_domains(language: str, settings: Settings) -> tuple[str, ...]:
    """The host names the installer of ``language`` must reach (index, then its files host)."""
    if INSTALLERS.get(language) == "pip":
        return _unique((_host(settings.pip_index_url), settings.pip_files_host.lower()))
    if INSTALLERS.get(language) == "npm":
        return (_host(settings.npm_registry),)
    return ()


def check_requirements_allowed(
    requirements: Sequence[str], language: str, policy: Policy, settings: Settings
) -> None:
    """Refuse requirements the policy cannot install.

    Raises:
        PolicyError: the policy's ``network.mode`` is not ``allowlist``, or its
            ``network.allowed_domains`` lack the index's domains.
    """
    if not requirements:
        return
    installer = INSTALLERS[language]
    domains = index_domains(language, settings)
    missing = [d for d in domains if not _allowed(d, policy.network.allowed_domains)]
    if policy.network.mode != "allowlist" or missing:
        add = ", ".join(missing or domains)
        raise PolicyError(
            f"policy {policy.name!r} cannot install requirements with {installer}: its "
            f"network.mode is {policy.network.mode!r} and network.allowed_domains "
            f"{'lacks' if missing else 'has'} {add}. Use a policy with network.mode: allowlist "
            f"and {add} in network.allowed_domains (research allows PyPI and npm)"
        )


def install_plan(
    requirements: Sequence[str], language: str, settings: Settings
) -> dict[str, Any] | None:
    """What the bootstrap installs before the code starts (the blob's ``requirements``)."""
    if not requirements:
        return None
    installer = INSTALLERS[language]
    if installer == "pip":
        url = settings.pip_index_url
        # A plain-HTTP index is the operator's explicit choice: pip refuses one unless trusted.
        trusted = [_host(url)] if urlsplit(url).scheme == "http" else []
        return {"tool": "pip", "packages": list(requirements), "index_url": url, "trusted": trusted}
    return None  # npm runs as the runner's process: see install_argv


NPM_FLAGS = (
    "--no-audit",
    "--no-fund",
    "--no-save",
    "--no-package-lock",
    "--ignore-scripts",  # no package's own scripts run: only require() runs a package's code
    "--no-update-notifier",
    "--loglevel=error",
)


def install_argv(
    requirements: Sequence[str], language: str, settings: Settings
) -> list[str] | None:
    """The installer the runner runs before the code (npm for JavaScript), or None.

    npm is a program of its own: where the policy refuses processes to the code, the kernel
    refuses them to the interpreter, so the runner starts npm itself, before the code has its
    parameters, with the run's file rules but not the code's process refusals.
    """
    if not requirements or INSTALLERS.get(language) != "npm":
        return None
    return [
        "npm",
        "install",
        *NPM_FLAGS,
        "--prefix",
        "/workspace",
        "--registry",
        settings.npm_registry,
        "--",
        *requirements,
    ]


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _allowed(host: str, allowed: Sequence[str]) -> bool:
    return any(name_verdict(host, port, allowed).allowed for port in (443, 80))


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))
