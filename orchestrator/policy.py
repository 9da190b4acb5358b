"""Sandbox policies: the models of schema v1 and ``load_policy``, the only policy file I/O.

A policy is given as a shipped name (``strict``), a path to a YAML file, a dict with the same
fields, or a :class:`Policy`. A string containing ``/`` or ending in ``.yaml``/``.yml`` is a path
(relative to the working directory); anything else is a shipped name. In a file, ``extends`` and
relative mount sources are relative to that file. ``extends`` merges mappings deeply and replaces
lists; cycles are an error. A policy without an ``extends`` key extends ``strict``;
``extends: null`` starts from the schema's defaults. Every error names the file, the field and
what was expected.

Policies may come from an agent, so loading is hostile-input safe: ``extends`` names a shipped
policy or a file in or below the extending file's own directory (a dict: shipped names only);
a file is at most :data:`MAX_POLICY_FILE_BYTES`, without YAML aliases or anchors; chains of
``extends`` and nested values have depth limits; and an error never echoes a file's text, only
its path, the key path (names clipped) and numbers.

The mount source ``${project_dir}`` stands for the project directory of the settings (default:
the working directory); :func:`resolve_mounts` expands it and refuses dangerous sources.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from yaml.nodes import Node

from orchestrator.errors import PolicyError, PolicyNotFoundError, RequestError
from orchestrator.text import check_json_text

PROJECT_DIR_TOKEN = "${project_dir}"
DEFAULT_MOUNT_WRITE_BYTES = 1024**3
DEFAULT_POLICY = "strict"

NetworkMode = Literal["none", "allowlist", "open"]
GvisorMode = Literal["never", "prefer", "require"]
SandboxMode = Literal["docker", "fast", "srt", "restricted", "inprocess"]
MODE_STRENGTH: tuple[SandboxMode, ...] = ("docker", "fast", "srt", "restricted", "inprocess")
"""Isolation modes, strongest first (docker and fast are peers: see :data:`MODE_RANK`)."""
MODE_RANK: dict[str, int] = {"docker": 0, "fast": 0, "srt": 1, "restricted": 2, "inprocess": 3}
"""Containment class of each mode. A policy's fallback list is ordered by it, so a policy can
never prefer a weaker mode to a stronger one. docker and fast share a rank: both are kernel
namespaces, a seccomp filter, a cgroup and no capabilities per run on the same shared kernel
(docs/isolation.md compares them), so between those two the policy's own order decides."""

_HOST = r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
_DOMAIN_RE = re.compile(rf"{_HOST}(:(?P<port>[0-9]{{1,5}}))?")
_USER_RE = re.compile(r"(?P<uid>[0-9]+)(:(?P<gid>[0-9]+))?")  # ASCII digits only, not "\d"
MAX_ID = 2_147_483_646
"""The largest uid or gid a policy may ask for (2**31 - 2: what Linux and Docker accept)."""
MAX_POLICY_FILE_BYTES = 256 * 1024
"""The largest policy file read; larger files are refused unread."""
MAX_EXTENDS_DEPTH = 16
"""How many ``extends`` links one policy may follow (development -> research -> strict: 2)."""
MAX_NESTING_DEPTH = 16
"""How deeply mappings and lists may nest in a policy (the schema itself needs 3 levels)."""
_MAX_KEY_CHARS = 60  # a key name longer than this is clipped in messages
_MAX_PATH_CHARS = 200  # so is a path taken from a policy
_MAX_ERROR_LINES = 10  # a validation error shows this many problems, then "and N more"
_QUOTED_RE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")  # a repr() in a message
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


def _id_value(digits: str) -> int | None:
    """Return the value of a uid or gid, or None above MAX_ID (never int() of a huge string)."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(MAX_ID)) or int(significant) > MAX_ID:
        return None
    return int(significant)


IMAGE_REF_PATTERN = r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
"""A custom image reference (``name`` or ``name:tag``; no digest, no registry port)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Network(_Model):
    """Network access of the sandbox.

    ``none``: no interface but loopback; ``open``: Docker's bridge; ``allowlist``: HTTP(S) to
    ``allowed_domains`` only, through an egress proxy (the docker backend's own, or srt's in the
    srt mode); every other destination is refused.
    """

    mode: NetworkMode = "none"
    allowed_domains: tuple[str, ...] = ()

    @field_validator("allowed_domains")
    @classmethod
    def _check_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, entry in enumerate(value):  # the entry is not echoed: it is the file's text
            match = _DOMAIN_RE.fullmatch(entry.lower())
            port = match and match.group("port")
            if not match or (port and not 0 < int(port) < 65536):
                raise ValueError(
                    f"entry {index} is not a domain entry: write 'host', '*.suffix' or 'host:port'"
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
            raise ValueError("must be an absolute path without '..'")
        normal = "/" + "/".join(path.parts[1:])  # "//etc" is "/etc" to the kernel
        for reserved in _RESERVED_TARGETS:
            inside = reserved not in {"/", "/workspace"} and normal.startswith(reserved + "/")
            covers = normal != "/" and reserved.startswith(
                normal + "/"
            )  # e.g. /opt hides /opt/athena
            if normal == reserved or inside or covers:
                raise ValueError(
                    f"would cover {reserved}, which the sandbox needs; "
                    "mount under /project, /data, /mnt or /workspace/<name> instead"
                )
        return normal


class Filesystem(_Model):
    """The sandbox's filesystem: read-only root, size-capped tmpfs for /tmp and /workspace."""

    read_only_root: bool = True
    tmpfs_mb: int = Field(64, ge=1, le=16384)
    mounts: tuple[Mount, ...] = ()
    # What one run may add to the filesystems of its writable mounts (docker mode: measured
    # every 0.1 s as the filesystem's free space; the run is killed past it).
    max_mount_write_bytes: int = Field(DEFAULT_MOUNT_WRITE_BYTES, ge=0, le=2**50)


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
    """Who the code runs as, and whether it runs under gVisor.

    ``gvisor``: ``never`` (runc), ``prefer`` (runsc when the engine has it, else runc) or
    ``require`` (runsc, or the docker mode refuses the run: see the docker backend's
    ``choose_runtime``).
    """

    user: str = "65534:65534"
    gvisor: GvisorMode = "never"

    @field_validator("user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        match = _USER_RE.fullmatch(value)
        if not match:
            raise ValueError("is not 'uid' or 'uid:gid' with numeric ids, e.g. '65534:65534'")
        ids = [_id_value(digits) for digits in match.group("uid", "gid") if digits is not None]
        if 0 in ids:
            raise ValueError("the sandbox never runs as root (uid or gid 0): use e.g. 65534:65534")
        if None in ids:
            raise ValueError(f"uid and gid must be 1..{MAX_ID}: Linux and Docker cannot use more")
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


class Files(_Model):
    """Files a call sends into the workspace and gets back from ``/workspace/out``.

    ``max_in_bytes``: the most a call may send (``files=``, all files together);
    ``max_out_bytes``: the most that comes back (files and figures together); past it, the
    rest is left out and the result says what was cut.
    """

    max_in_bytes: int = Field(64 * 1024 * 1024, ge=0, le=1024**3)
    max_out_bytes: int = Field(64 * 1024 * 1024, ge=0, le=1024**3)


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
    files: Files = Files()
    image: str | None = Field(None, min_length=1, max_length=255, pattern=IMAGE_REF_PATTERN)
    fallback: tuple[SandboxMode, ...] = ("docker",)

    @field_validator("fallback")
    @classmethod
    def _order_fallback(cls, value: tuple[SandboxMode, ...]) -> tuple[SandboxMode, ...]:
        if not value:
            raise ValueError("list at least one isolation mode, e.g. [docker]")
        if len(set(value)) != len(value):
            raise ValueError("each mode may appear once")
        return tuple(sorted(value, key=MODE_RANK.__getitem__))  # stable: peers keep their order


# --------------------------------------------------------------------------- loading


@lru_cache(maxsize=1)
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


ShippedSnapshot = tuple[tuple[str, "FileVersion"], ...]


def shipped_snapshot() -> ShippedSnapshot:
    """Each shipped policy file's name and :func:`file_version`, sorted by name."""
    try:
        with os.scandir(shipped_policies_dir()) as entries:
            return tuple(
                sorted(
                    (entry.name, file_version(entry.stat()))
                    for entry in entries
                    if entry.name.endswith(".yaml")
                )
            )
    except OSError:
        return ()


@lru_cache(maxsize=64)
def load_shipped_policy(name: str, snapshot: ShippedSnapshot) -> Policy:
    """The shipped policy ``name`` as of ``snapshot`` (:func:`shipped_snapshot`), cached.

    Raises:
        PolicyNotFoundError: no shipped policy has the name.
    """
    # Reading a shipped policy, merging its extends chain and validating it costs about 0.3 ms
    # (more on a busy machine), paid by every run that names one or none. Policies are frozen,
    # so one object serves every run, and a shipped file that changes changes the snapshot:
    # the cache never goes stale. Unknown names raise, and exceptions are not cached.
    del snapshot  # part of the cache key only
    path = _shipped_path(name)
    return _validate(_raw_from_file(path, _Chain(str(path))), str(path))


def _shipped_path(name: str) -> Path:
    path = shipped_policies_dir() / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file():
        raise PolicyNotFoundError(
            f"unknown policy {_clip(name)!r}: use one of {', '.join(shipped_policy_names())}, "
            "a path to a YAML file (containing '/' or ending in .yaml), or a dict"
        )
    return path


def _clip(text: str, limit: int = _MAX_KEY_CHARS) -> str:
    """Return text fit for one line of a message: escaped if unprintable, clipped to limit."""
    if not text.isprintable():
        text = ascii(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- messages


def _format_validation_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    lines = [f"{source}: invalid policy"]
    lines += [_error_line(err) for err in errors[:_MAX_ERROR_LINES]]
    if len(errors) > _MAX_ERROR_LINES:
        lines.append(f"  and {len(errors) - _MAX_ERROR_LINES} more")
    return "\n".join(lines)


def _error_line(err: ErrorDetails) -> str:
    field = ".".join(_clip(str(part)) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"  {field}: unknown key: check the spelling against the policy reference"
    message = err["msg"].removeprefix("Value error, ")
    return f"  {field}: {message}{_shown_input(err)}"


def _shown_input(err: ErrorDetails) -> str:
    """Return " (got N)" for a number, a boolean or null; never a string or a container.

    Strings are the file's text (or, through an ``extends``, another file's): never echoed.
    """
    value = err.get("input")
    if err["type"] == "missing" or type(value) not in {bool, int, float, type(None)}:
        return ""
    if isinstance(value, int) and value.bit_length() > 64:
        return " (got a number too large to show)"
    return f" (got {value!r})"


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Describe a YAML error by line and problem, with any quoted text of the file removed.

    PyYAML quotes the offending text in its problems (a tag, a character, an alias name) and
    shows the line itself in ``str(exc)``: neither is echoed.
    """
    if isinstance(exc, yaml.reader.ReaderError):
        return f" at line {text.count(chr(10), 0, exc.position) + 1}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "syntax error"
    return f"{where}: {_clip(_without_file_text(problem), _MAX_PATH_CHARS)}"


def _without_file_text(problem: str) -> str:
    """Return a PyYAML problem with its quoted text hidden (token names and punctuation kept)."""
    pieces, end = [], 0
    for quoted in _QUOTED_RE.finditer(problem):
        pieces += [problem[end : quoted.start()], _redacted(quoted.group())]
        end = quoted.end()
    pieces.append(problem[end:])
    if any(quote in piece for piece in pieces[::2] for quote in "'\""):
        return "the YAML cannot be parsed"  # a quote we could not pair: hide it all
    return "".join(pieces).strip()


def _redacted(quoted: str) -> str:
    """Keep a YAML token name ('<scalar>') or one punctuation mark (','); hide anything else."""
    return quoted if re.fullmatch(r"'(<[a-z ]+>|[^\w\s'\\])'", quoted) else "(...)"


# --------------------------------------------------------------------------- reading files


class _PolicyYamlLoader(yaml.SafeLoader):
    """SafeLoader refusing aliases and anchors (no billion laughs) and deep nesting.

    The composer is recursive; the depth limit keeps it far from Python's recursion limit.
    """

    _depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        """Compose one node, refusing an alias, an anchor or nesting beyond the limit.

        Raises:
            yaml.composer.ComposerError: the node is an alias or has an anchor, or is nested
                more than MAX_NESTING_DEPTH levels deep; marked with its line.
        """
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        if isinstance(event, yaml.NodeEvent) and (
            isinstance(event, yaml.AliasEvent) or event.anchor is not None
        ):
            problem = "aliases and anchors (*name, &name) are not allowed in policy files"
            raise _composer_error(event, problem)
        nests = int(isinstance(event, yaml.CollectionStartEvent))
        if self._depth + nests > MAX_NESTING_DEPTH:
            problem = f"values are nested more than {MAX_NESTING_DEPTH} levels deep"
            raise _composer_error(event, problem)
        self._depth += nests
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests


def _composer_error(event: yaml.Event, problem: str) -> yaml.composer.ComposerError:
    mark = event.start_mark  # the stubs know two Mark classes; the pure-Python loader uses one
    return yaml.composer.ComposerError(None, None, problem, mark)  # type: ignore[arg-type]


def _read_text(path: Path) -> str:
    """Read a policy file of at most MAX_POLICY_FILE_BYTES as UTF-8 (never more is read).

    Raises:
        PolicyError: the file cannot be read, is too large, or is not UTF-8.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {_why(exc)}") from exc
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise PolicyError(
            f"{path}: the policy file is larger than {MAX_POLICY_FILE_BYTES // 1024} KiB, "
            "the limit for policy files"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (at byte {exc.start})") from exc


FileVersion = tuple[int, int, int, int]


def file_version(info: os.stat_result) -> FileVersion:
    """What tells one version of a file from another: inode, size, mtime and ctime (ns).

    The mtime alone misses an edit whose mtime is put back (``cp -p``, ``rsync -a``, ``touch
    -d``); the ctime changes with every edit and cannot be set, and a replaced file has
    another inode.
    """
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@lru_cache(maxsize=128)
def _read_yaml(path: Path, version: FileVersion) -> dict[str, Any]:
    """Parse one policy file; cached by :func:`file_version`, so each call is cheap.

    Raises:
        PolicyError: the file cannot be read, is too large, is not YAML (aliases and deep
            nesting included) or is not a mapping.
    """
    del version  # part of the cache key only
    text = _read_text(path)
    try:
        raw = yaml.load(text, Loader=_PolicyYamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: invalid YAML{_yaml_problem(exc, text)}") from exc
    except (ValueError, OverflowError) as exc:  # a date out of range, an int of 5,000 digits
        raise PolicyError(f"{path}: invalid YAML: a value cannot be converted") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(
            f"{path}: a policy file must be a mapping of fields, not {type(raw).__name__}"
        )
    return raw


def _stat_policy_file(path: Path) -> os.stat_result:
    """Return the stat of a policy file that exists and is a regular file.

    Raises:
        PolicyNotFoundError: nothing is at the path.
        PolicyError: it cannot be looked at, or is not a regular file (a FIFO, a device).
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise PolicyNotFoundError(f"policy file {path} does not exist") from exc
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {_why(exc)}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise PolicyError(f"{path}: a policy file must be a regular file")
    return info


# --------------------------------------------------------------------------- extends


@dataclass(frozen=True)
class _Chain:
    """One ``extends`` chain: where it started, the files read, the links followed."""

    origin: str
    files: tuple[Path, ...] = ()
    depth: int = 0

    def add(self, path: Path) -> _Chain:
        """Return the chain with one more file.

        Raises:
            PolicyError: the file is already in the chain (a cycle).
        """
        if path in self.files:
            cycle = " -> ".join(str(p) for p in (*self.files, path))
            raise PolicyError(f"policy 'extends' cycle: {cycle}")
        return _Chain(self.origin, (*self.files, path), self.depth)

    def deeper(self) -> _Chain:
        """Return the chain one ``extends`` link longer.

        Raises:
            PolicyError: the chain would be longer than MAX_EXTENDS_DEPTH links.
        """
        if self.depth >= MAX_EXTENDS_DEPTH:
            raise PolicyError(
                f"{self.origin}: extends: the chain of extends is longer than "
                f"{MAX_EXTENDS_DEPTH} levels, the limit; extend a policy nearer the top"
            )
        return _Chain(self.origin, self.files, self.depth + 1)


def _parent_path(parent: str, base_dir: Path | None, source: str) -> Path:
    """Return the file an ``extends`` names: shipped by name, or in or below ``base_dir``.

    ``base_dir`` is the extending file's directory; None (a dict) allows shipped names only.

    Raises:
        PolicyNotFoundError: no shipped policy has the name.
        PolicyError: the path leaves ``base_dir`` (``..``, an absolute path elsewhere, a
            symlink pointing out), cannot be resolved, or is given in a dict.
    """
    if not _is_path(parent):
        return _shipped_path(parent)
    shipped = f"a shipped policy ({', '.join(shipped_policy_names())})"
    if base_dir is None:
        raise PolicyError(f"{source}: extends: a policy dict may extend only {shipped}, not a path")
    target = _resolve(parent, f"{source}: extends", base_dir)  # "/x" replaces base_dir
    if not target.is_relative_to(base_dir):
        raise PolicyError(
            f"{source}: extends: {_clip(parent, _MAX_PATH_CHARS)!r} is outside {base_dir}; "
            f"extends may name {shipped} or a file in or below the policy's directory"
        )
    return target


def _raw_from_file(path: Path, chain: _Chain) -> dict[str, Any]:
    path = _resolve(path, "policy file")
    chain = chain.add(path)
    info = _stat_policy_file(path)
    raw = dict(_read_yaml(path, file_version(info)))  # a copy: the cached dict stays as read
    raw = _absolute_mount_sources(raw, path.parent, str(path))
    raw.setdefault("name", path.stem)
    return _with_parent(raw, path.parent, str(path), chain)


def _with_parent(
    raw: dict[str, Any], base_dir: Path | None, source: str, chain: _Chain
) -> dict[str, Any]:
    # A policy that does not say what it extends extends strict: whatever it leaves out is
    # strict's. `extends: null` starts from the bare schema defaults instead.
    parent = raw.get("extends", DEFAULT_POLICY)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise PolicyError(f"{source}: extends: expected a shipped policy name or a path")
    deeper = chain.deeper()
    try:
        base = _raw_from_file(_parent_path(parent, base_dir, source), deeper)
    except PolicyNotFoundError as exc:
        raise PolicyNotFoundError(f"{source}: extends: {exc}") from exc
    return {**_merge(base, raw), "extends": parent}


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- validating


def _check_nesting(raw: Mapping[Any, Any], source: str) -> None:
    """Refuse mappings and lists nested deeper than MAX_NESTING_DEPTH, without recursing.

    Raises:
        PolicyError: a value is nested too deeply (or contains itself); names its top key.
    """
    stack: list[tuple[Any, str, int]] = [(value, str(key), 2) for key, value in raw.items()]
    while stack:
        value, field, depth = stack.pop()
        if isinstance(value, Mapping):
            children = list(value.values())
        elif isinstance(value, list | tuple):
            children = list(value)
        else:
            continue
        if depth > MAX_NESTING_DEPTH:
            raise PolicyError(
                f"{source}: invalid policy\n  {_clip(field)}: values are nested more than "
                f"{MAX_NESTING_DEPTH} levels deep"
            )
        stack.extend((child, field, depth + 1) for child in children)


def _absolute_mount_sources(
    raw: dict[str, Any], base_dir: Path | None, source: str
) -> dict[str, Any]:
    """Make relative mount sources absolute: against the file's directory (None: the cwd).

    Raises:
        PolicyError: a source cannot be resolved; names the file, the field and the path.
    """
    filesystem = raw.get("filesystem")
    if not isinstance(filesystem, Mapping) or not isinstance(filesystem.get("mounts"), list):
        return raw
    mounts = []
    for index, mount in enumerate(filesystem["mounts"]):
        path = mount.get("source") if isinstance(mount, Mapping) else None
        if isinstance(path, str) and not path.startswith(("/", PROJECT_DIR_TOKEN)):
            field = f"{source}: invalid policy\n  filesystem.mounts.{index}.source"
            # "~/x" is the home's, not the file's: _resolve expands it before joining.
            mounts.append({**mount, "source": str(_resolve(path, field, base_dir))})
        else:
            mounts.append(mount)
    return {**raw, "filesystem": {**filesystem, "mounts": mounts}}


def _validate(raw: dict[str, Any], source: str) -> Policy:
    try:  # a lone surrogate would pass here and break every encoding of the policy later
        check_json_text(raw, "policy")
    except RequestError as exc:
        raise PolicyError(f"{source}: invalid policy\n  {exc}") from exc
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(_format_validation_error(source, exc)) from exc
    for index, mount in enumerate(policy.filesystem.mounts):
        if not mount.source.startswith(PROJECT_DIR_TOKEN):
            _checked_source(
                mount.source, f"{source}: invalid policy\n  filesystem.mounts.{index}.source"
            )
    return policy


def _from_dict(spec: Mapping[str, Any]) -> Policy:
    source = "policy dict"
    _check_nesting(spec, source)
    raw = _absolute_mount_sources(dict(spec), None, source)
    raw.setdefault("name", "custom")
    return _validate(_with_parent(raw, None, source, _Chain(source)), source)


def load_policy(spec: Policy | Mapping[str, Any] | str | os.PathLike[str] | None) -> Policy:
    """Load a policy from a shipped name, a YAML path, a dict or a Policy (None: strict).

    A file given here may be anywhere; its ``extends`` may name a shipped policy or a file in
    or below its own directory. A dict's ``extends`` may name only a shipped policy.

    Raises:
        PolicyNotFoundError: no shipped policy has the name, or the file does not exist.
        PolicyError: the file or dict is invalid, asks for something unsupported, is too
            large or too deeply nested, uses YAML aliases, or its ``extends`` leaves its
            directory, has a cycle or is too long. The message names the file and the field.
    """
    if spec is None:
        spec = DEFAULT_POLICY
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, Mapping):
        return _from_dict(spec)
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _is_path(spec)):
        path = Path(spec)
    elif isinstance(spec, str):
        return load_shipped_policy(spec, shipped_snapshot())
    else:
        raise PolicyError(
            "sandbox_policy must be a policy name, a path, a dict or None, "
            f"not {type(spec).__name__}"
        )
    raw = _raw_from_file(path, _Chain(str(path)))
    return _validate(raw, str(path))


# --------------------------------------------------------------------------- mounts


@dataclass(frozen=True)
class ResolvedMount:
    """A mount with its source expanded, made absolute and checked.

    ``device`` and ``inode`` identify what was checked: the engine resolves the source path
    again later, so a backend makes sure it binds this very directory (0: not recorded).
    """

    source: str
    target: str
    read_only: bool
    device: int = 0
    inode: int = 0


def _why(exc: Exception) -> str:
    """Say why a file system call failed, without the path (the message names it already)."""
    return (isinstance(exc, OSError) and exc.strerror) or _clip(str(exc), _MAX_PATH_CHARS)


def _path_error(field: str, path: Path | str, exc: Exception) -> PolicyError:
    shown = _clip(str(path), _MAX_PATH_CHARS)
    return PolicyError(f"{field}: {shown} cannot be resolved: {_why(exc)}")


def _resolve(path: Path | str, field: str, base_dir: Path | None = None) -> Path:
    """Expand ``~``, make absolute (against ``base_dir``, else the cwd) and resolve symlinks.

    Raises:
        PolicyError: that failed (an unreadable directory, a symlink loop, a name too long,
            an unknown ``~user``); the message names the field and the path.
    """
    try:
        expanded = Path(path).expanduser()
        return (expanded if base_dir is None else base_dir / expanded).resolve()
    except (OSError, RuntimeError) as exc:
        raise _path_error(field, path, exc) from exc


def _spellings(source: str, field: str) -> tuple[Path, ...]:
    """Return a source as written and with ``..`` collapsed, absolute, not touching the disk.

    Raises:
        PolicyError: ``~user`` names an unknown user, or the working directory is gone.
    """
    try:
        written = Path.cwd() / Path(source).expanduser()
    except (OSError, RuntimeError) as exc:
        raise _path_error(field, source, exc) from exc
    collapsed = Path(os.path.normpath(written))
    return tuple(Path("/" + str(p).lstrip("/")) for p in (written, collapsed))  # "//x" is "/x"


def _checked_source(source: str, field: str) -> Path:
    """Return a mount source resolved, judged before resolving (as written) and after.

    Judging the raw path first refuses ``/proc/1/root/etc`` as inside /proc even when
    resolving it fails; judging the resolved path refuses symlinks that point there.

    Raises:
        PolicyError: the source cannot be resolved or must never be mounted.
    """
    for spelling in _spellings(source, field):
        _refuse(spelling, source, field)
    path = _resolve(source, field)
    _refuse(path, str(path), field)
    return path


def _refuse(path: Path, shown: str, field: str) -> None:
    reason = _refusal(path)
    if reason:
        shown = _clip(shown, _MAX_PATH_CHARS)
        raise PolicyError(f"{field}: {shown} cannot be mounted: {reason}")


def _home() -> Path | None:
    """Return the resolved home directory, or None when there is none to protect."""
    try:
        return Path.home().resolve()
    except (OSError, RuntimeError, KeyError):
        return None


def _refusal(path: Path) -> str | None:
    text = str(path)
    home = _home()
    if path == Path("/"):
        return "it is the root of the host"
    if home is not None and (path == home or path in home.parents):
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


def _is_dir(path: Path, field: str) -> bool:
    try:
        return path.is_dir()
    except OSError as exc:
        raise PolicyError(f"{field}: {path} cannot be checked: {_why(exc)}") from exc


def _exists(path: Path, field: str) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # exists() swallows only "not found"; EACCES, ENAMETOOLONG pass
        raise PolicyError(
            f"{field}: {_clip(str(path), _MAX_PATH_CHARS)} cannot be checked: {_why(exc)}"
        ) from exc


def check_project_dir(project_dir: Path) -> Path:
    """Return the resolved project directory, refusing ``/``, the home directory and the like.

    Raises:
        PolicyError: the directory does not exist, cannot be resolved, or must never be
            mounted.
    """
    resolved = _resolve(project_dir, "the project directory")
    if not _is_dir(resolved, "the project directory"):
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


def _leaves(field: str, source: str, base: Path) -> PolicyError:
    shown = _clip(source, _MAX_PATH_CHARS)
    return PolicyError(f"{field}: {shown} leaves the project directory {base}")


def _resolve_mount(name: str, index: int, mount: Mount, project_dir: Path) -> ResolvedMount:
    field = f"policy {name!r}: filesystem.mounts.{index}.source"
    source, base = mount.source, None
    if source.startswith(PROJECT_DIR_TOKEN):
        base = check_project_dir(project_dir)
        source = str(base) + source.removeprefix(PROJECT_DIR_TOKEN)
        if not Path(os.path.normpath(source)).is_relative_to(base):
            raise _leaves(field, mount.source, base)
    path = _checked_source(source, field)
    if base is not None and not path.is_relative_to(base):
        raise _leaves(field, mount.source, base)
    if not _exists(path, field):
        raise PolicyError(f"{field}: {_clip(str(path), _MAX_PATH_CHARS)} does not exist")
    device, inode = _identity(path, field)
    return ResolvedMount(str(path), mount.target, mount.read_only, device, inode)


def _identity(path: Path, field: str) -> tuple[int, int]:
    """Device and inode of exactly the checked path (no link followed, the name re-checked)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PolicyError(f"{field}: {_clip(str(path), _MAX_PATH_CHARS)}: {_why(exc)}") from exc
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")  # the kernel's name of what was opened
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if opened != str(path):
        raise PolicyError(
            f"{field}: {_clip(str(path), _MAX_PATH_CHARS)} changed while it was checked "
            "(a link was put in its place): refused"
        )
    return info.st_dev, info.st_ino


def resolve_mounts(policy: Policy, project_dir: Path) -> tuple[ResolvedMount, ...]:
    """Expand ``${project_dir}``, resolve symlinks and refuse dangerous mount sources.

    Raises:
        PolicyError: a source is missing, cannot be resolved or checked, or is the Docker
            socket, ``/``, ``/proc``, ``/sys``, the home directory or another place that must
            never be mounted. The message names the field and the path.
    """
    return tuple(
        _resolve_mount(policy.name, index, mount, project_dir)
        for index, mount in enumerate(policy.filesystem.mounts)
    )
