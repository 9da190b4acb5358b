"""Sandbox policies: the models of schema v1 and ``load_policy``, the only policy file I/O.

A policy is given as a shipped name (``strict``), a path to a YAML file, a dict with the same
fields, or a :class:`Policy`. A string containing ``/`` or ending in ``.yaml``/``.yml`` is a path
(relative to the working directory); anything else is a shipped name. In a file, ``extends`` and
relative mount sources are relative to that file. ``extends`` merges mappings deeply and replaces
lists; cycles are an error. A policy without an ``extends`` key extends ``strict``;
``extends: null`` starts from the schema's defaults. Every error names the file, the field and
what was expected.

The mount source ``${project_dir}`` stands for the project directory of the settings (default:
the working directory); :func:`resolve_mounts` expands it and refuses dangerous sources.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import PolicyError, PolicyNotFoundError

PROJECT_DIR_TOKEN = "${project_dir}"
DEFAULT_POLICY = "strict"

NetworkMode = Literal["none", "allowlist", "open"]
GvisorMode = Literal["never", "prefer", "require"]
SandboxMode = Literal["docker", "srt", "restricted", "inprocess"]
MODE_STRENGTH: tuple[SandboxMode, ...] = ("docker", "srt", "restricted", "inprocess")
"""Isolation modes, strongest first."""

_HOST = r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
_DOMAIN_RE = re.compile(rf"{_HOST}(:(?P<port>\d{{1,5}}))?")
_USER_RE = re.compile(r"(?P<uid>\d+)(:(?P<gid>\d+))?")
# Targets the sandbox itself needs; a mount there would replace the system or the runner.
_RESERVED_TARGETS = (
    "/",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/opt/athena",
    "/tmp",
    "/workspace",
    "/var",
    "/run",
    "/boot",
    "/root",
)
# Host paths never mounted: the kernel's views, the engine's state and socket, system config.
_REFUSED_SOURCE_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/var/lib/docker", "/run/docker")
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Network(_Model):
    """Network access of the sandbox.

    ``none``: no interface but loopback; ``open``: Docker's bridge; ``allowlist``: HTTP(S) to
    ``allowed_domains`` through an egress proxy (not available yet).
    """

    mode: NetworkMode = "none"
    allowed_domains: tuple[str, ...] = ()

    @field_validator("allowed_domains")
    @classmethod
    def _check_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            match = _DOMAIN_RE.fullmatch(entry.lower())
            port = match and match.group("port")
            if not match or (port and not 0 < int(port) < 65536):
                raise ValueError(
                    f"{entry!r} is not a domain entry: write 'host', '*.suffix' or 'host:port'"
                )
        return tuple(e.lower() for e in value)


class Mount(_Model):
    """A host directory mounted into the sandbox."""

    source: str
    target: str
    read_only: bool = True

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{value!r} must be an absolute path without '..'")
        normal = "/" + "/".join(path.parts[1:])  # "//etc" is "/etc" to the kernel
        for reserved in _RESERVED_TARGETS:
            inside = reserved not in {"/", "/workspace"} and normal.startswith(reserved + "/")
            covers = normal != "/" and reserved.startswith(
                normal + "/"
            )  # e.g. /opt hides /opt/athena
            if normal == reserved or inside or covers:
                raise ValueError(
                    f"{value!r} would cover {reserved}, which the sandbox needs; "
                    "mount under /project, /data, /mnt or /workspace/<name> instead"
                )
        return normal


class Filesystem(_Model):
    """The sandbox's filesystem: read-only root, size-capped tmpfs for /tmp and /workspace."""

    read_only_root: bool = True
    tmpfs_mb: int = Field(64, ge=1, le=16384)
    mounts: tuple[Mount, ...] = ()


class Limits(_Model):
    """Resource limits. The call's timeout is capped by ``timeout_seconds``."""

    memory_mb: int = Field(256, ge=32, le=262144)
    cpus: float = Field(1.0, gt=0, le=256)
    pids: int = Field(64, ge=8, le=65536)
    timeout_seconds: float = Field(30, gt=0, le=86400)
    max_output_bytes: int = Field(1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    file_size_mb: int = Field(16, ge=1, le=1024 * 1024)
    open_files: int = Field(256, ge=32, le=1024 * 1024)


class Runtime(_Model):
    """Who the code runs as, and whether gVisor is asked for (not available yet)."""

    user: str = "65534:65534"
    gvisor: GvisorMode = "never"

    @field_validator("user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        match = _USER_RE.fullmatch(value)
        if not match:
            raise ValueError(f"{value!r} is not 'uid' or 'uid:gid' with numeric ids")
        if int(match.group("uid")) == 0 or (match.group("gid") and int(match.group("gid")) == 0):
            raise ValueError("the sandbox never runs as root (uid or gid 0): use e.g. 65534:65534")
        return value

    @property
    def uid(self) -> int:
        """The numeric user id."""
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        """The numeric group id (the uid when none is given)."""
        parts = self.user.split(":")
        return int(parts[1] if len(parts) > 1 else parts[0])


class JavascriptRules(_Model):
    """Validation rules for JavaScript."""

    forbidden_modules: tuple[str, ...] = ()


class BashRules(_Model):
    """Validation rules for bash."""

    forbidden_commands: tuple[str, ...] = ()


class Validation(_Model):
    """What the code validator checks before a run.

    With ``enforce: false`` findings are only reported; the sandbox must hold either way.
    """

    enforce: bool = True
    forbidden_imports: tuple[str, ...] = ()
    forbidden_calls: tuple[str, ...] = ()
    allowed_imports: tuple[str, ...] = ()
    javascript: JavascriptRules = JavascriptRules()
    bash: BashRules = BashRules()


class Records(_Model):
    """What the memory store keeps of runs under this policy."""

    redact_parameters: bool = False


class Policy(_Model):
    """A sandbox policy (schema v1). Field names are a public contract."""

    name: str = Field(min_length=1, max_length=100)
    extends: str | None = None
    description: str = ""
    network: Network = Network()
    filesystem: Filesystem = Filesystem()
    limits: Limits = Limits()
    runtime: Runtime = Runtime()
    validation: Validation = Validation()
    records: Records = Records()
    fallback: tuple[SandboxMode, ...] = ("docker",)

    @field_validator("fallback")
    @classmethod
    def _order_fallback(cls, value: tuple[SandboxMode, ...]) -> tuple[SandboxMode, ...]:
        if not value:
            raise ValueError("list at least one isolation mode, e.g. [docker]")
        if len(set(value)) != len(value):
            raise ValueError("each mode may appear once")
        return tuple(sorted(value, key=MODE_STRENGTH.index))


# --------------------------------------------------------------------------- loading


def shipped_policies_dir() -> Path:
    """Return the directory of the shipped policy files (installed copy or source checkout)."""
    package = Path(__file__).resolve().parent
    installed = package / "_shipped" / "policies"
    return installed if installed.is_dir() else package.parent / "policies"


def shipped_policy_names() -> list[str]:
    """Return the names of the shipped policies, sorted."""
    return sorted(p.stem for p in shipped_policies_dir().glob("*.yaml"))


def _is_path(spec: str) -> bool:
    return "/" in spec or spec.endswith((".yaml", ".yml"))


def _shipped_path(name: str) -> Path:
    path = shipped_policies_dir() / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file():
        raise PolicyNotFoundError(
            f"unknown policy {name!r}: use one of {', '.join(shipped_policy_names())}, "
            "a path to a YAML file (containing '/' or ending in .yaml), or a dict"
        )
    return path


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid policy"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key: check the spelling against the policy reference"
        got = f" (got {err['input']!r})" if err["type"] not in {"extra_forbidden"} else ""
        if err["type"] == "missing" or isinstance(err.get("input"), dict):
            got = ""
        lines.append(f"  {field}: {message}{got}")
    return "\n".join(lines)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _absolute_mount_sources(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Make relative mount sources of one file absolute, relative to that file's directory."""
    filesystem = raw.get("filesystem")
    if not isinstance(filesystem, Mapping) or not isinstance(filesystem.get("mounts"), list):
        return raw
    mounts = []
    for mount in filesystem["mounts"]:
        source = mount.get("source") if isinstance(mount, Mapping) else None
        if isinstance(source, str) and not source.startswith(("/", PROJECT_DIR_TOKEN)):
            absolute = Path(source).expanduser()  # "~/x" is the home's, not the file's
            mounts.append({**mount, "source": str((base_dir / absolute).resolve())})
        else:
            mounts.append(mount)
    return {**raw, "filesystem": {**filesystem, "mounts": mounts}}


@lru_cache(maxsize=128)
def _read_yaml(path: Path, mtime_ns: int) -> dict[str, Any]:
    """Parse one policy file; cached by modification time, so each call is cheap."""
    del mtime_ns  # part of the cache key only
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{path}: invalid YAML{where}: {problem}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(
            f"{path}: a policy file must be a mapping of fields, not {type(raw).__name__}"
        )
    return raw


def _raw_from_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise PolicyError(f"policy 'extends' cycle: {cycle}")
    if not path.is_file():
        raise PolicyNotFoundError(f"policy file {path} does not exist")
    raw = _read_yaml(path, path.stat().st_mtime_ns)
    raw = _absolute_mount_sources(raw, path.parent)
    raw.setdefault("name", path.stem)
    return _with_parent(raw, path.parent, str(path), (*chain, path))


def _with_parent(
    raw: dict[str, Any], base_dir: Path, source: str, chain: tuple[Path, ...]
) -> dict[str, Any]:
    # A policy that does not say what it extends extends strict: whatever it leaves out is
    # strict's. `extends: null` starts from the bare schema defaults instead.
    parent = raw.get("extends", DEFAULT_POLICY)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise PolicyError(f"{source}: extends: expected a shipped policy name or a path")
    try:
        if _is_path(parent):
            parent_path = Path(parent) if Path(parent).is_absolute() else base_dir / parent
        else:
            parent_path = _shipped_path(parent)
        base = _raw_from_file(parent_path, chain)
    except PolicyNotFoundError as exc:
        raise PolicyNotFoundError(f"{source}: extends: {exc}") from exc
    return {**_merge(base, raw), "extends": parent}


def _validate(raw: dict[str, Any], source: str) -> Policy:
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(_format_validation_error(source, exc)) from exc
    for index, mount in enumerate(policy.filesystem.mounts):
        if not mount.source.startswith(PROJECT_DIR_TOKEN):
            reason = _refusal(Path(mount.source).expanduser().resolve())
            if reason:
                raise PolicyError(
                    f"{source}: invalid policy\n  filesystem.mounts.{index}.source: "
                    f"{mount.source} cannot be mounted: {reason}"
                )
    return policy


def load_policy(spec: Policy | Mapping[str, Any] | str | os.PathLike[str] | None) -> Policy:
    """Load a policy from a shipped name, a YAML path, a dict or a Policy (None: strict).

    Raises:
        PolicyNotFoundError: no shipped policy has the name, or the file does not exist.
        PolicyError: the file or dict is invalid, asks for something unsupported, or its
            ``extends`` chain has a cycle. The message names the file and the field.
    """
    if spec is None:
        spec = DEFAULT_POLICY
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, Mapping):
        raw = _absolute_mount_sources(dict(spec), Path.cwd())
        raw.setdefault("name", "custom")
        return _validate(_with_parent(raw, Path.cwd(), "policy dict", ()), "policy dict")
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _is_path(spec)):
        path = Path(spec)
    elif isinstance(spec, str):
        path = _shipped_path(spec)
    else:
        raise PolicyError(
            "sandbox_policy must be a policy name, a path, a dict or None, "
            f"not {type(spec).__name__}"
        )
    raw = _raw_from_file(path, ())
    return _validate(raw, str(path))


# --------------------------------------------------------------------------- mounts


@dataclass(frozen=True)
class ResolvedMount:
    """A mount with its source expanded, made absolute and checked."""

    source: str
    target: str
    read_only: bool


def _refusal(path: Path) -> str | None:
    text = str(path)
    home = Path.home().resolve()
    if path == Path("/"):
        return "it is the root of the host"
    if path == home or path in home.parents:
        return f"it is the home directory {home} or contains it; mount a project below it"
    for tree in _REFUSED_SOURCE_TREES:
        if text == tree or text.startswith(tree + "/"):
            return f"it is inside {tree}"
        if tree.startswith(text + "/"):
            return f"it contains {tree}"
    for sock in _DOCKER_SOCKETS:
        if text == sock or sock.startswith(text + "/") or path.name == "docker.sock":
            return "it would expose the Docker socket"
    return None


def check_project_dir(project_dir: Path) -> Path:
    """Return the resolved project directory, refusing ``/``, the home directory and the like.

    Raises:
        PolicyError: the directory does not exist or must never be mounted.
    """
    resolved = project_dir.expanduser().resolve()
    if not resolved.is_dir():
        raise PolicyError(
            f"the project directory {resolved} does not exist; set ATHENA_PROJECT_DIR"
        )
    reason = _refusal(resolved)
    if reason:
        raise PolicyError(
            f"the project directory {resolved} cannot be mounted: {reason}. "
            "Set ATHENA_PROJECT_DIR (or Settings.project_dir) to the project itself."
        )
    return resolved


def resolve_mounts(policy: Policy, project_dir: Path) -> tuple[ResolvedMount, ...]:
    """Expand ``${project_dir}``, resolve symlinks and refuse dangerous mount sources.

    Raises:
        PolicyError: a source is missing, or is the Docker socket, ``/``, ``/proc``, ``/sys``,
            the home directory or another place that must never be mounted.
    """
    resolved = []
    for index, mount in enumerate(policy.filesystem.mounts):
        field = f"policy {policy.name!r}: filesystem.mounts.{index}.source"
        source = mount.source
        base = None
        if source.startswith(PROJECT_DIR_TOKEN):
            base = check_project_dir(project_dir)
            source = str(base) + source.removeprefix(PROJECT_DIR_TOKEN)
        path = Path(source).expanduser().resolve()
        if base is not None and path != base and base not in path.parents:
            raise PolicyError(f"{field}: {mount.source} leaves the project directory {base}")
        if not path.exists():
            raise PolicyError(f"{field}: {path} does not exist")
        reason = _refusal(path)
        if reason:
            raise PolicyError(f"{field}: {path} cannot be mounted: {reason}")
        resolved.append(ResolvedMount(str(path), mount.target, mount.read_only))
    return tuple(resolved)
