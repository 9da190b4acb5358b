"""What a tenant may ask of the service: the policy gate.

Over the service, ``sandbox_policy`` is one of:

- ``None``: ``strict`` if the tenant may use it, else the tenant's first policy;
- a shipped policy name the tenant may use (paths are refused: they name files on the
  server's disk, which a remote caller has no business choosing);
- a dict that ``extends`` a policy the tenant may use (no ``extends`` key: ``strict``, as in the
  library) and does not let the run reach more of the host than that base: no mount added,
  repeated or made writable, no wider network (no domain the base does not list, unless the base
  is ``open``), the same user, gVisor no less required, no writable root, no larger
  ``max_mount_write_bytes``, and a ``fallback`` that only drops the base's weakest modes (a
  caller may not pick ``restricted`` where the base would run in ``docker``). Limits and
  validation may change (the schema's own bounds still apply), except that
  ``validation.allowed_imports`` only narrows: it is the ``restricted`` mode's import wall, and
  that mode runs on the server's host. The records and the description may change too; the
  name may not look like a shipped policy's (letters, digits, ``-_.``; compared ignoring case
  and punctuation), so records never mistake an inline policy for a shipped one.

Every refusal is a :class:`~orchestrator.errors.PolicyError` (an unknown name:
:class:`~orchestrator.errors.PolicyNotFoundError`) whose message says what to change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from athena.service.tokens import Tenant
from orchestrator.errors import PolicyError, PolicyNotFoundError
from orchestrator.policy import (
    DEFAULT_POLICY,
    Mount,
    Policy,
    ShippedSnapshot,
    load_policy,
    load_shipped_policy,
    shipped_snapshot,
)

__all__ = ["allowed_policy_names", "check_recorded_policy", "resolve_policy"]

_NETWORK_REACH = ("none", "allowlist", "open")  # least reach first
_GVISOR_STRENGTH = ("never", "prefer", "require")  # weakest first
_FIELD = "sandbox_policy"
_SHOWN_CHARS = 60
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # ASCII: no look-alikes, no controls
_PUNCTUATION_RE = re.compile(r"[_.-]")


def allowed_policy_names(tenant: Tenant) -> tuple[str, ...]:
    """Return the shipped policies the tenant may use, in the order its token lists them."""
    shipped = _shipped_names(shipped_snapshot())
    return tuple(name for name in tenant.policies if name in shipped)


def _shipped_names(snapshot: ShippedSnapshot) -> tuple[str, ...]:
    return tuple(entry[0].removesuffix(".yaml") for entry in snapshot)


def resolve_policy(spec: object, tenant: Tenant) -> Policy:
    """Return the policy a service request asks for, if the tenant may use it.

    Args:
        spec: the request's ``sandbox_policy``: None, a policy name, or a dict that
            ``extends`` one.
        tenant: who asks.

    Raises:
        PolicyNotFoundError: the name (or a dict's ``extends``) is no shipped policy; the
            message names the ones the tenant may use.
        PolicyError: a path was given, the tenant may not use the policy, the dict is invalid
            or reaches more of the host than its base, or ``spec`` has another type; the
            message says what to change.
    """
    snapshot = shipped_snapshot()
    shipped = _shipped_names(snapshot)
    allowed = tuple(name for name in tenant.policies if name in shipped)
    if not allowed:
        raise PolicyError(
            f"tenant {tenant.name!r} may use no shipped policy; ask the operator for a token "
            f"with --policies naming some of {', '.join(shipped)}"
        )
    gate = _Gate(tenant, allowed, shipped)
    if spec is None:
        return load_shipped_policy(
            DEFAULT_POLICY if DEFAULT_POLICY in allowed else allowed[0], snapshot
        )
    if isinstance(spec, str):
        return load_shipped_policy(gate.allowed_name(spec, _FIELD), snapshot)
    if isinstance(spec, Mapping):
        base_name = gate.allowed_name(_extends(spec, gate), f"{_FIELD}.extends")
        base = load_shipped_policy(base_name, snapshot)
        return _inline(spec, gate, base)
    raise PolicyError(
        f"{_FIELD} must be a policy name ({', '.join(allowed)}), an object that extends one, "
        f"or null; not {type(spec).__name__}"
    )


def check_recorded_policy(name: str, config: Mapping[str, Any] | None, tenant: Tenant) -> None:
    """Refuse to replay a recorded session under a policy the tenant may no longer use.

    A shipped policy must still be one of the tenant's; an inline one (a name no shipped policy
    has) must reach no more of the host than one of them, as when the gate let it through.

    Raises:
        PolicyError: the tenant may not use the recorded policy now (the message names the
            ones it may use).
    """
    snapshot = shipped_snapshot()
    shipped = _shipped_names(snapshot)
    allowed = tuple(known for known in tenant.policies if known in shipped)
    gate = _Gate(tenant, allowed, shipped)
    if name in shipped or not config:
        gate.allowed_name(name, "the recorded session's policy")
        return
    try:
        policy = load_policy(dict(config))
    except PolicyError as exc:
        raise PolicyError(f"the recorded session's policy cannot be loaded: {exc}") from exc
    for base_name in allowed:
        try:
            _check_reach(policy, load_shipped_policy(base_name, snapshot))
        except PolicyError:
            continue
        return
    raise PolicyError(
        f"the recorded session's policy {_shown(name)} reaches more of the host than any policy "
        f"tenant {tenant.name!r} may use ({', '.join(allowed) or 'none'}); it cannot be replayed"
    )


def _shown(text: str) -> str:
    """Text fit for one line of a message, quoted: escaped once if unprintable, clipped."""
    clipped = text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
    return repr(clipped) if clipped.isprintable() else ascii(clipped)


@dataclass(frozen=True)
class _Gate:
    """One request's tenant, the policies it may use and the shipped ones."""

    tenant: Tenant
    allowed: tuple[str, ...]
    shipped: tuple[str, ...]

    def allowed_name(self, name: str, field: str) -> str:
        """Return ``name`` if it is a shipped policy the tenant may use.

        Raises:
            PolicyNotFoundError: no shipped policy has the name.
            PolicyError: the name is a path, or the tenant may not use that policy.
        """
        names = ", ".join(self.allowed)
        if "/" in name or name.endswith((".yaml", ".yml")):
            raise PolicyError(
                f"{field}: paths on the server's disk are not accepted over the service; "
                f"name a policy: {names}"
            )
        if name not in self.shipped:
            raise PolicyNotFoundError(f"{field}: unknown policy {_shown(name)}: use one of {names}")
        if name not in self.allowed:
            raise PolicyError(
                f"{field}: tenant {self.tenant.name!r} may not use policy {name!r}: "
                f"use one of {names}"
            )
        return name


def _extends(spec: Mapping[Any, Any], gate: _Gate) -> str:
    extends = spec.get("extends", DEFAULT_POLICY)
    if not isinstance(extends, str) or not extends:
        raise PolicyError(
            f"{_FIELD}.extends: an inline policy must extend a policy you may use: set "
            f"extends to one of {', '.join(gate.allowed)}"
        )
    return extends


def _inline(spec: Mapping[Any, Any], gate: _Gate, base: Policy) -> Policy:
    if "name" in spec:
        _check_name(spec["name"], gate)
    _check_raw_mounts(spec, base)  # before loading: no client path is ever resolved on disk
    policy = load_policy(spec)
    _check_reach(policy, base)
    return policy


def _skeleton(name: str) -> str:
    """What a name looks like to a reader: case and ``-_.`` ignored."""
    return _PUNCTUATION_RE.sub("", name).casefold()


def _check_name(name: object, gate: _Gate) -> None:
    """Refuse an inline name that is not plain ASCII or looks like a shipped policy's.

    Records keep the policy's name; ``Strict``, ``strict `` or a Cyrillic look-alike would
    pass for the shipped policy there.

    Raises:
        PolicyError: naming what to change.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise PolicyError(
            f"{_FIELD}.name: use 1..100 ASCII letters, digits, '-', '_' or '.', starting with "
            "a letter or digit (or leave name out)"
        )
    alike = [s for s in gate.shipped if _skeleton(s) == _skeleton(name)]
    if alike:
        raise PolicyError(
            f"{_FIELD}.name: {name!r} is a shipped policy's name or looks like it ({alike[0]!r});"
            " leave name out or choose another, so records do not mistake this policy for the "
            "shipped one"
        )


def _check_raw_mounts(spec: Mapping[Any, Any], base: Policy) -> None:
    filesystem = spec.get("filesystem")
    if not isinstance(filesystem, Mapping) or "mounts" not in filesystem:
        return
    raw = filesystem["mounts"]
    if not isinstance(raw, list | tuple):
        raise PolicyError(f"{_FIELD}.filesystem.mounts: expected a list of the base's mounts")
    mounts = []
    for index, item in enumerate(raw):
        try:
            mounts.append(Mount.model_validate(item))
        except ValidationError as exc:
            raise _mount_error(index, base) from exc
    _check_mounts(tuple(mounts), base)


def _check_mounts(mounts: tuple[Mount, ...], base: Policy) -> None:
    """Refuse mounts other than the base's, a base mount listed twice, or one made writable.

    Raises:
        PolicyError: naming the mount's index and what to change.
    """
    seen: set[tuple[str, str]] = set()
    for index, mount in enumerate(mounts):
        _check_mount(index, mount, base)
        if (mount.source, mount.target) in seen:
            raise PolicyError(
                f"{_FIELD}.filesystem.mounts.{index}: {mount.target} is listed twice; list "
                "each of the base's mounts at most once"
            )
        seen.add((mount.source, mount.target))


def _mount_error(index: int, base: Policy) -> PolicyError:
    if base.filesystem.mounts:
        mine = ", ".join(f"{m.source} at {m.target}" for m in base.filesystem.mounts)
        keep = f"list only {base.name!r}'s mounts ({mine}), or leave filesystem.mounts out"
    else:
        keep = f"{base.name!r} mounts nothing; leave filesystem.mounts out"
    return PolicyError(
        f"{_FIELD}.filesystem.mounts.{index}: over the service a policy cannot add or change "
        f"mounts; {keep}"
    )


def _check_mount(index: int, mount: Mount, base: Policy) -> None:
    for known in base.filesystem.mounts:
        if (mount.source, mount.target) == (known.source, known.target):
            if not mount.read_only and known.read_only:
                raise PolicyError(
                    f"{_FIELD}.filesystem.mounts.{index}: {known.target} is read-only in "
                    f"{base.name!r}; set read_only: true"
                )
            return
    raise _mount_error(index, base)


def _check_reach(policy: Policy, base: Policy) -> None:
    """Refuse a policy that reaches more of the host than its base.

    Raises:
        PolicyError: naming the field, what the base allows and what to change.
    """
    _check_mounts(policy.filesystem.mounts, base)
    _check_filesystem(policy, base)
    _check_network(policy, base)
    _check_runtime(policy, base)
    _check_fallback(policy, base)
    _check_imports(policy, base)
    _check_limits(policy, base)
    _check_enforcement(policy, base)


def _refusal(field: str, base: Policy, what: str) -> PolicyError:
    return PolicyError(
        f"{_FIELD}.{field}: reaches more of the host than {base.name!r} allows ({what}); "
        "an inline policy may only narrow its base, or extend a policy that allows more"
    )


def _check_filesystem(policy: Policy, base: Policy) -> None:
    if base.filesystem.read_only_root and not policy.filesystem.read_only_root:
        raise _refusal("filesystem.read_only_root", base, "set it to true")
    most = base.filesystem.max_mount_write_bytes
    if policy.filesystem.max_mount_write_bytes > most:
        raise _refusal("filesystem.max_mount_write_bytes", base, f"at most {most}")


def _check_network(policy: Policy, base: Policy) -> None:
    mode, base_mode = policy.network.mode, base.network.mode
    if _NETWORK_REACH.index(mode) > _NETWORK_REACH.index(base_mode):
        narrower = ", ".join(_NETWORK_REACH[: _NETWORK_REACH.index(base_mode) + 1])
        raise _refusal("network.mode", base, f"use one of {narrower}")
    if base_mode != "open":  # none counts too: a dormant entry would be live if mode changed
        extra = [d for d in policy.network.allowed_domains if d not in base.network.allowed_domains]
        if extra:
            domains = ", ".join(base.network.allowed_domains)
            keep = f"list only some of {domains}" if domains else "it lists none: leave it out"
            raise _refusal(
                "network.allowed_domains", base, f"{_shown(extra[0])} is not in it; {keep}"
            )


def _check_runtime(policy: Policy, base: Policy) -> None:
    if policy.runtime.user != base.runtime.user:
        raise _refusal("runtime.user", base, f"leave it out or set {base.runtime.user!r}")
    floor = _GVISOR_STRENGTH.index(base.runtime.gvisor)
    if _GVISOR_STRENGTH.index(policy.runtime.gvisor) < floor:
        stronger = ", ".join(_GVISOR_STRENGTH[floor:])
        raise _refusal("runtime.gvisor", base, f"use one of {stronger}")


def _check_fallback(policy: Policy, base: Policy) -> None:
    # Modes are tried strongest first, so a run uses the first one the server has. Dropping
    # a strong mode (fallback: [restricted] on a docker host) picks a weaker sandbox than the
    # base would get here: only the weakest modes may go, i.e. a prefix of the base's list.
    if policy.fallback != base.fallback[: len(policy.fallback)]:
        choices = " | ".join(
            ", ".join(base.fallback[:end]) for end in range(1, len(base.fallback) + 1)
        )
        raise _refusal(
            "fallback", base, f"only its weakest modes may be dropped: use one of {choices}"
        )


def _check_imports(policy: Policy, base: Policy) -> None:
    # allowed_imports is the restricted mode's import wall, and that mode runs on the host.
    allowed = set(base.validation.allowed_imports)
    extra = [name for name in policy.validation.allowed_imports if name not in allowed]
    if extra:
        raise _refusal(
            "validation.allowed_imports",
            base,
            f"{_shown(extra[0])} is not in it: list only some of the base's allowed_imports",
        )


_LIMITS = ("memory_mb", "cpus", "pids", "timeout_seconds", "max_output_bytes", "file_size_mb",
           "open_files")  # fmt: skip


def _check_limits(policy: Policy, base: Policy) -> None:
    # A token grants its policies' share of the host; an inline dict may ask for less, never
    # more (a tenant that needs more asks the operator for a token with a larger policy).
    for field in _LIMITS:
        mine, theirs = getattr(policy.limits, field), getattr(base.limits, field)
        if mine > theirs:
            raise _refusal(f"limits.{field}", base, f"ask for at most {theirs}, not {mine}")
    if policy.filesystem.tmpfs_mb > base.filesystem.tmpfs_mb:
        raise _refusal(
            "filesystem.tmpfs_mb",
            base,
            f"ask for at most {base.filesystem.tmpfs_mb}, not {policy.filesystem.tmpfs_mb}",
        )


def _check_enforcement(policy: Policy, base: Policy) -> None:
    # Outside a container (srt, restricted) the validator and its run-time guard are part of
    # the wall; only where every mode left is a container may a caller turn them off.
    if base.validation.enforce and not policy.validation.enforce and policy.fallback != ("docker",):
        raise _refusal(
            "validation.enforce",
            base,
            "keep it true, or set fallback: [docker] so the run never leaves a container",
        )
