"""Typed request and result models: what goes into a run and what comes out of it.

All models are frozen pydantic models. ``ExecutionResult.to_dict()`` is the plain dict that
``MemoryAPI.execute_code`` returns; its keys are a public contract (keys may be added, never
removed).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from orchestrator.errors import RequestError
from orchestrator.languages import get_language
from orchestrator.policy import IMAGE_REF_PATTERN, Policy, load_policy
from orchestrator.text import MAX_JSON_DEPTH, check_json_text, check_text, find_lone_surrogate

# The text checks are re-exported: the memory store checks its callers' text with them (of the
# orchestrator, it imports only models and errors).
__all__ = [
    "DEFAULT_MAX_CODE_BYTES",
    "DEFAULT_MAX_PARAMETERS_BYTES",
    "DEFAULT_TENANT",
    "FAILING_CATEGORIES",
    "MAX_JSON_DEPTH",
    "TENANT_PATTERN",
    "Event",
    "ExecutionRequest",
    "ExecutionResult",
    "InputFile",
    "Isolation",
    "OutputFile",
    "Resources",
    "SessionState",
    "ValidationIssue",
    "Violation",
    "ViolationCategory",
    "check_json_text",
    "check_tenant",
    "check_text",
    "find_lone_surrogate",
    "finite_seconds",
    "shown_number",
]

ViolationCategory = Literal[
    "timeout", "memory", "processes", "filesystem", "network", "output", "signal", "policy"
]
"""What a violation is about; the text before the colon in the dict's ``violations``."""

FAILING_CATEGORIES: frozenset[str] = frozenset({"timeout", "memory", "processes", "signal"})
"""Violations that make a run unsuccessful even when the code exited 0."""

DEFAULT_MAX_CODE_BYTES = 1024 * 1024
DEFAULT_MAX_PARAMETERS_BYTES = 1024 * 1024
DEFAULT_TENANT = "default"
"""The tenant of the library, of ``athena-sandbox mcp`` and of a service without tokens."""
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""A tenant name: 1 to 64 of a-z, 0-9, ``_``, ``.`` and ``-``, starting with a letter or digit."""
_TENANT_RE = re.compile(TENANT_PATTERN)


def check_tenant(name: object) -> str:
    """Return ``name`` when it is a valid tenant name (see :data:`TENANT_PATTERN`).

    Raises:
        RequestError: not a string, or not 1 to 64 of lower-case letters, digits, ``_``, ``.``
            and ``-`` starting with a letter or digit.
    """
    if not isinstance(name, str):
        raise RequestError(f"a tenant name must be a string, not {type(name).__name__}")
    if _TENANT_RE.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise RequestError(
            f"tenant name {shown!r} is not valid: use 1 to 64 lower-case letters, digits, '_', "
            "'.' or '-', starting with a letter or digit (e.g. 'default', 'team-a')"
        )
    return name


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Violation(_Frozen):
    """Something the run did that the policy does not allow, or a limit it hit.

    Attributes:
        category: one of timeout, memory, processes, filesystem, network, output, signal,
            policy (the run-time policy layer refused something; not failing by itself).
        message: a sentence for people and agents.
        detail: machine-readable figures (limits, counts, signal numbers).
    """

    category: ViolationCategory
    message: str
    detail: dict[str, JsonValue] = Field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.category}: {self.message}"


class ValidationIssue(_Frozen):
    """One finding of the code validator.

    Attributes:
        severity: ``error`` blocks the run when the policy enforces validation; ``warning`` never.
        message: what was found and why it matters.
        line: 1-based line of the finding, when known.
        rule: the policy rule behind it (``syntax``, ``forbidden_import``, ``forbidden_call``,
            ``forbidden_module``, ``forbidden_command``, ``dynamic_import``).
    """

    severity: Literal["error", "warning"]
    message: str
    line: int | None = None
    rule: str = "syntax"

    def to_dict(self) -> dict[str, Any]:
        """Return the ``{severity, message, line}`` dict of the public API (plus ``rule``)."""
        return {
            "severity": self.severity,
            "message": self.message,
            "line": self.line,
            "rule": self.rule,
        }


class Event(_Frozen):
    """Something that happened during a run, in the order it happened.

    Attributes:
        kind: ``begin`` (the code started), ``stdout``/``stderr`` (a chunk of output),
            ``violation`` or ``exit``.
        text: the chunk, for stdout and stderr.
        violation: the violation, for ``violation`` events.
        exit_code: the exit code, for ``exit`` events.
        elapsed_ms: milliseconds since the run's context started.
        result: the run's result, on the ``exit`` event that ends every run.
        sandbox_id: the sandbox the code runs in, on the ``begin`` event.
    """

    kind: Literal["begin", "stdout", "stderr", "violation", "exit"]
    text: str = ""
    violation: Violation | None = None
    exit_code: int | None = None
    elapsed_ms: float = 0.0
    result: ExecutionResult | None = None
    sandbox_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of the streaming API: ``type`` plus what the kind carries."""
        event: dict[str, Any] = {"type": self.kind, "elapsed_ms": round(self.elapsed_ms, 3)}
        if self.kind == "begin":
            event["sandbox_id"] = self.sandbox_id
        elif self.kind in {"stdout", "stderr"}:
            event["text"] = self.text
        elif self.kind == "violation" and self.violation is not None:
            event["violation"] = str(self.violation)
            event["detail"] = self.violation.model_dump(mode="json")
        elif self.kind == "exit":
            event["exit_code"] = self.exit_code
            event["result"] = self.result.to_dict() if self.result else None
        return event


SessionState = Literal["kept", "restarted", "ended"]
"""What a session call did to its session: ``kept`` (the state is there for the next call),
``restarted`` (the call could not be interrupted: a fresh sandbox took over, the state is lost),
``ended`` (a memory or process violation ended the session: the next call raises)."""


class InputFile(_Frozen):
    """A file written into the workspace before the code starts (``files=``).

    Attributes:
        name: its path under ``/workspace``, relative (checked by
            :func:`orchestrator.files.check_files`).
        data: its content.
    """

    name: str
    data: bytes = Field(repr=False)

    def to_record(self) -> dict[str, Any]:
        """What a record keeps of it: name, size and SHA-256, not the content."""
        return {
            "name": self.name,
            "size": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
        }


class OutputFile(_Frozen):
    """A file the code wrote under ``/workspace/out``, or a figure it left open (an artifact).

    Attributes:
        name: its path under ``/workspace/out`` (figures: ``figure-<n>.png``).
        size: its size in bytes.
        sha256: the SHA-256 of its content, hex.
        mime_type: guessed from the name (``application/octet-stream`` when unknown).
        content: its bytes (base64 over JSON).
    """

    name: str
    size: int
    sha256: str
    mime_type: str
    content: bytes = Field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The public dict: name, size, sha256, mime_type and content (bytes)."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "content": self.content,
        }

    def to_record(self) -> dict[str, Any]:
        """What a record keeps of it: everything but the content."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
        }


class Resources(_Frozen):
    """Resource figures of one run, from the sandbox's cgroup (with ``track_resources``)."""

    peak_memory_bytes: int | None = None
    cpu_time_ms: float | None = None
    wall_time_ms: float | None = None


class Isolation(_Frozen):
    """How a run was isolated.

    Attributes:
        mode: the sandbox mode (``docker``).
        runtime: the container runtime (``runc``), when there is one.
        path: ``cold`` for a container started for this run.
        image: the image reference the sandbox ran.
    """

    mode: str
    runtime: str | None = None
    path: str | None = None
    image: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Return the ``isolation`` dict of the public API."""
        return {"runtime": self.runtime, "path": self.path, "image": self.image}


def _check_parameters(parameters: Mapping[str, Any] | None, limit: int) -> dict[str, JsonValue]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise RequestError(
            f"parameters must be a dict (a JSON object) or None, not {type(parameters).__name__}"
        )
    # Before json.dumps: lone surrogates cannot be encoded, and deep nesting makes it recurse.
    check_json_text(parameters, "parameters")
    try:
        text = json.dumps(parameters, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise RequestError(
            f"parameters must be JSON-serialisable: {exc}. Pass only dicts, lists, strings, "
            "numbers (not NaN or infinity), booleans and None."
        ) from exc
    size = len(text.encode("utf-8"))
    if size > limit:
        raise RequestError(
            f"parameters are {size} bytes as JSON; the limit is {limit} bytes. "
            "Pass less data, or raise ATHENA_MAX_PARAMETERS_BYTES."
        )
    loaded: dict[str, JsonValue] = json.loads(text)
    return loaded


def finite_seconds(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None.

    An int too large for a float (``10**400``, which JSON carries) is None, not the
    ``OverflowError`` that ``float()`` or ``math.isfinite()`` would raise.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def shown_number(value: object) -> str:
    """A value for a message, short whatever its size (an int of 4,301 digits has no str)."""
    if isinstance(value, int) and not -(10**15) < value < 10**15:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    return repr(value)


def _check_timeout(timeout_seconds: float | None) -> float | None:
    if timeout_seconds is None:
        return None
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int | float):
        raise RequestError(
            f"timeout_seconds must be a number of seconds, not {type(timeout_seconds).__name__}"
        )
    seconds = finite_seconds(timeout_seconds)
    if seconds is None or seconds <= 0:
        raise RequestError(
            f"timeout_seconds must be a finite number greater than 0 (got "
            f"{shown_number(timeout_seconds)}); pass None to use the policy's limit"
        )
    return seconds


def _check_image(image: object) -> str | None:
    if image is None:
        return None
    if not isinstance(image, str) or not re.fullmatch(IMAGE_REF_PATTERN, image) or len(image) > 255:
        shown = shown_number(image) if not isinstance(image, str) else repr(image[:80])
        raise RequestError(
            f"image {shown} is not an image reference: give a local image's name, optionally "
            "with a tag (e.g. 'my-python:1'), built with `athena-sandbox build-image`"
        )
    return image


class ExecutionRequest(_Frozen):
    """One request to run code. Build it with :meth:`create`, which checks every field.

    Attributes:
        code: the source text.
        language: the canonical language name (python, javascript, bash).
        parameters: a JSON object handed to the code as data.
        timeout_seconds: the caller's timeout; the policy's limit caps it. None: the policy's.
        policy: the resolved policy.
        execution_id: unique id of this run.
        track_resources: report cgroup figures in ``resources``.
        record: persist the run in the memory store.
        tenant: whose run it is: the memory store files its record under this tenant.
        session_id: the session this call belongs to (None: a one-shot run).
        files: files written into the workspace before the code starts.
        capture_figures: return figures still open at the end (or shown) as PNG artifacts.
        image: a custom image to run in (built ``FROM athena-sandbox/<language>``); None: the
            policy's ``image``, else the language's own.
        requirements: packages installed before the code starts (pip specs for python, npm
            specs for javascript; checked by :func:`orchestrator.packages.check_requirements`).
    """

    code: str
    language: str
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_seconds: float | None = None
    policy: Policy
    execution_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    track_resources: bool = False
    record: bool = True
    tenant: str = Field(DEFAULT_TENANT, pattern=TENANT_PATTERN)
    session_id: str | None = None
    files: tuple[InputFile, ...] = ()
    capture_figures: bool = True
    image: str | None = Field(None, pattern=IMAGE_REF_PATTERN, max_length=255)
    requirements: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        policy: Policy | None = None,
        *,
        track_resources: bool = False,
        record: bool = True,
        max_code_bytes: int = DEFAULT_MAX_CODE_BYTES,
        max_parameters_bytes: int = DEFAULT_MAX_PARAMETERS_BYTES,
        tenant: str = DEFAULT_TENANT,
        files: Mapping[str, Any] | None = None,
        capture_figures: bool = True,
        image: str | None = None,
        session_id: str | None = None,
        requirements: Sequence[str] | None = None,
    ) -> ExecutionRequest:
        r"""Check the caller's arguments and build a request.

        Code and every string in ``parameters`` (keys included) must be valid Unicode text: a
        lone surrogate such as ``"\ud800"`` is refused. Parameters may nest dicts and lists at
        most ``MAX_JSON_DEPTH`` (64) levels deep, the parameters dict itself being level 1.

        Raises:
            RequestError: code that is not a string, is too large or holds a lone surrogate;
                parameters that are not a JSON object, hold a lone surrogate or nest too deep;
                a timeout that is not a positive number; a tenant name that is not valid
                (see :func:`check_tenant`); files that cannot be written or are over the
                policy's ``files.max_in_bytes`` (see :func:`orchestrator.files.check_files`);
                an image reference that is not one; requirements that are not a list of
                plain package specs, or for a language without an installer.
            UnknownLanguageError: a language we do not run.
        """
        from orchestrator.files import check_files  # it builds on this module's models
        from orchestrator.packages import check_requirements

        check_tenant(tenant)
        if not isinstance(code, str):
            raise RequestError(f"code must be a string, not {type(code).__name__}")
        check_text(code, "code")
        size = len(code.encode("utf-8"))
        if size > max_code_bytes:
            raise RequestError(
                f"code is {size} bytes; the limit is {max_code_bytes} bytes. "
                "Send smaller code, or raise ATHENA_MAX_CODE_BYTES."
            )
        lang = get_language(language)
        checked = _check_parameters(parameters, max_parameters_bytes)
        lang.parameters_blob(checked)  # raises for parameters this language cannot take
        resolved = policy if policy is not None else load_policy(None)
        if not isinstance(capture_figures, bool):
            raise RequestError(f"capture_figures must be true or false, not {capture_figures!r}")
        return cls(
            code=code,
            language=lang.name,
            parameters=checked,
            timeout_seconds=_check_timeout(timeout_seconds),
            policy=resolved,
            track_resources=track_resources,
            record=record,
            tenant=tenant,
            session_id=session_id,
            files=check_files(
                files, lang.code_file, resolved.files.max_in_bytes, resolved.filesystem.tmpfs_mb
            ),
            capture_figures=capture_figures,
            image=_check_image(image),
            requirements=check_requirements(requirements, lang.name),
        )

    def effective_timeout(self) -> float:
        """Return the timeout the run gets: the caller's, capped by the policy's limit."""
        limit = self.policy.limits.timeout_seconds
        return limit if self.timeout_seconds is None else min(self.timeout_seconds, limit)


class ExecutionResult(_Frozen):
    """What happened to one run. ``to_dict()`` gives the public dict.

    ``success`` is True when the code exited 0 and no timeout, memory, processes or signal
    violation happened. ``exit_code`` is 0 on success, 128+N when the code was killed by
    signal N, and -1 when the code never ran.
    """

    execution_id: str
    success: bool
    stdout: str = ""
    stderr: str = ""
    exit_code: int = -1
    execution_time_ms: float = 0.0
    violations: tuple[Violation, ...] = ()
    sandbox_id: str | None = None
    language: str
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    sandbox_mode: str | None = None
    isolation: Isolation | None = None
    output: JsonValue = None
    error: str | None = None
    error_type: str | None = None
    issues: tuple[ValidationIssue, ...] = ()
    policy: str = "strict"
    timeout_seconds: float | None = None
    resources: Resources | None = None
    total_time_ms: float = 0.0
    session_id: str | None = None
    session_state: SessionState | None = None
    files: tuple[OutputFile, ...] = ()
    artifacts: tuple[OutputFile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of the public API; every key is always present."""
        return {
            "success": self.success,
            "execution_id": self.execution_id,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "execution_time_ms": self.execution_time_ms,
            "violations": [str(v) for v in self.violations],
            "violation_details": [v.model_dump(mode="json") for v in self.violations],
            "sandbox_id": self.sandbox_id,
            "language": self.language,
            "timestamp": self.timestamp.isoformat(),
            "sandbox_mode": self.sandbox_mode,
            "isolation": self.isolation.to_dict() if self.isolation else {},
            "output": self.output,
            "error": self.error,
            "error_type": self.error_type,
            "issues": [i.to_dict() for i in self.issues],
            "policy": self.policy,
            "timeout_seconds": self.timeout_seconds,
            "resources": self.resources.model_dump() if self.resources else None,
            "total_time_ms": self.total_time_ms,
            "session_id": self.session_id,
            "session_state": self.session_state,
            "files": [f.to_dict() for f in self.files],
            "artifacts": [a.to_dict() for a in self.artifacts],
        }
