"""Policies described for people and agents: what each one allows, in one dict and one sentence.

:func:`describe_policy` is what ``MemoryAPI.list_policies`` and ``get_policy``, the HTTP API's
``/v1/policies`` and the MCP server's ``list_policies`` tool return for a policy: its name and
description, a one-sentence ``summary`` a model reads before choosing (network, mounts, limits,
validation, isolation modes), the parts a caller checks (``network``, ``mounts``, ``limits``,
``fallback``) and the whole ``config``. Mount sources are shown as the policy writes them
(``${project_dir}`` for the project directory), never resolved against the server's disk.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import PolicyNotFoundError, RequestError
from orchestrator.policy import Mount, Policy, load_policy, shipped_policy_names

__all__ = ["describe_policy", "get_shipped_policy", "shipped_policies"]

_PROJECT_DIR = "${project_dir}"


def _network(policy: Policy) -> str:
    network = policy.network
    if network.mode == "none":
        return "no network access"
    if network.mode == "open":
        return "open network access (Docker's bridge network)"
    if not network.allowed_domains:
        return "HTTP(S) to no domain at all (an allowlist with no entries)"
    return f"HTTP(S) only to {', '.join(network.allowed_domains)} (through an egress proxy)"


def _mount(mount: Mount) -> str:
    source = "the project directory" if mount.source == _PROJECT_DIR else mount.source
    access = "read-only" if mount.read_only else "read-write"
    return f"{source} {access} at {mount.target}"


def _mounts(policy: Policy) -> str:
    mounts = policy.filesystem.mounts
    if not mounts:
        return "no host directory mounted"
    return "mounts " + " and ".join(_mount(m) for m in mounts)


def _limits(policy: Policy) -> str:
    limits = policy.limits
    cpus = f"{limits.cpus:g} CPU" + ("" if limits.cpus == 1 else "s")
    return (
        f"{limits.memory_mb} MB memory, {cpus}, {limits.pids} processes, "
        f"{limits.timeout_seconds:g} s timeout"
    )


def _forbidden(count_of: str, names: tuple[str, ...]) -> str | None:
    if not names:
        return None
    if len(names) <= 3:
        return f"the {count_of}{'s' if len(names) > 1 else ''} {', '.join(names)}"
    return f"{len(names)} {count_of}s"


def _validation(policy: Policy) -> str:
    rules = policy.validation
    found = [
        _forbidden("import", rules.forbidden_imports),
        _forbidden("call", rules.forbidden_calls),
        _forbidden("JavaScript module", rules.javascript.forbidden_modules),
        _forbidden("shell command", rules.bash.forbidden_commands),
    ]
    forbidden = ", ".join(f for f in found if f is not None)
    if not rules.enforce:
        return "validation reported only (findings never block a run)"
    if not forbidden:
        return "validation enforced but forbids nothing (only code that does not parse is refused)"
    return f"validation enforced (code using one of these is refused before it runs: {forbidden})"


def _modes(policy: Policy) -> str:
    modes = list(policy.fallback)
    text = modes[0] if len(modes) == 1 else f"{', '.join(modes[:-1])} or {modes[-1]}"
    sentence = f"runs in {text} isolation, the strongest available first"
    if len(modes) == 1:
        sentence = f"runs only in {text} isolation"
    if "inprocess" in modes:
        sentence += " (inprocess means no isolation: only where the host opts in to it)"
    if policy.runtime.gvisor == "require":
        sentence += ", under gVisor (runsc) only"
    elif policy.runtime.gvisor == "prefer":
        sentence += ", under gVisor (runsc) when the engine has it"
    return sentence


def _summary(policy: Policy) -> str:
    parts = [_network(policy), _mounts(policy), _limits(policy), _validation(policy)]
    return f"{policy.name}: {'; '.join(parts)}; {_modes(policy)}."


def describe_policy(policy: Policy) -> dict[str, Any]:
    """Return what a policy allows, as a JSON-ready dict.

    Returns:
        ``{"name", "description", "summary", "network": {"mode", "allowed_domains"},
        "mounts": [{"source", "target", "read_only"}], "limits": {memory_mb, cpus, pids,
        timeout_seconds, max_output_bytes, file_size_mb, open_files}, "fallback": [modes],
        "config": <the whole policy, as model_dump(mode="json")>}``.
    """
    config = policy.model_dump(mode="json")
    return {
        "name": policy.name,
        "description": policy.description,
        "summary": _summary(policy),
        "network": config["network"],
        "mounts": config["filesystem"]["mounts"],
        "limits": config["limits"],
        "fallback": config["fallback"],
        "config": config,
    }


def get_shipped_policy(name: str) -> Policy:
    """Return the shipped policy of this name (never a file path).

    Raises:
        RequestError: ``name`` is not a string.
        PolicyNotFoundError: no shipped policy has this name (the message names them).
    """
    if not isinstance(name, str):
        raise RequestError(f"a policy name must be a string, not {type(name).__name__}")
    names = shipped_policy_names()
    if name not in names:
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise PolicyNotFoundError(
            f"unknown policy {shown!r}: the shipped policies are {', '.join(names)}"
        )
    return load_policy(name)


def shipped_policies() -> list[dict[str, Any]]:
    """Return every shipped policy, described (:func:`describe_policy`), sorted by name."""
    return [describe_policy(load_policy(name)) for name in shipped_policy_names()]
