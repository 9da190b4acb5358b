"""The MCP server's tools: their arguments, the descriptions a model reads, and what each calls.

Each tool is a :class:`ToolSpec`: a name, a description, a strict pydantic model of its
arguments (unknown arguments refused; its JSON schema is the tool's input schema) and a
function ``(api, tenant, arguments) -> dict`` over :class:`~athena.api.MemoryAPI`. The dict is
the tool's structured content; lists come wrapped (``{"results": [...]}``) because structured
content is an object. ``execute_code`` streams and the session tools keep per-connection state,
so :mod:`athena.service.mcp` and :mod:`athena.service.mcp_sessions` run them (their ``call``
is None); :func:`run_summary` is the short text an LLM reads of a run's result.

Files go in as ``files``: an object of name (relative to ``/workspace``) -> text, or
``{"base64": "..."}`` for bytes (:func:`decode_files`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from memory_store.consolidation.strategies import STRATEGIES
from memory_store.errors import RecordNotFoundError
from memory_store.requests import SEARCH_KINDS
from orchestrator.errors import RequestError
from orchestrator.languages import LANGUAGES

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.tokens import Tenant

TEXT_LIMIT = 4000
"""Characters of stdout (and of stderr) the text block keeps; the structured content has all."""

LANGUAGE_NAMES = ", ".join(f"{lang.name} ({', '.join(lang.aliases)})" for lang in LANGUAGES)
_CONTEXT = "JSON object kept with the record (recall's `context` filter matches its pairs)."


class ToolArgs(BaseModel):
    """Base of the argument models: strict types, unknown arguments refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Base64File(ToolArgs):
    """A file's bytes, base64-encoded (for content that is not text)."""

    base64: str = Field(description="The file's bytes, base64-encoded (standard alphabet).")


Files = dict[str, str | Base64File] | None
_FILES = Field(
    None,
    description="Files written under /workspace before the code starts (the code's working "
    "directory): an object of relative name (e.g. 'data.csv' or 'input/a.json') -> the text, "
    'or {"base64": "..."} for bytes. The policy caps their total size. Files the code writes '
    "under /workspace/out come back in the result's `files` (content base64).",
)
_CAPTURE = Field(
    True,
    description="Python: return the matplotlib figures the code leaves open or shows as PNG "
    "`artifacts` (content base64), also shown as images.",
)
_CALL_TIMEOUT = Field(
    None,
    description="Seconds before the run is killed (above 0); capped by the policy's "
    "limit. null: the policy's limit.",
)
_IMAGE = Field(
    None,
    description="A custom image built with `athena-sandbox build-image` (FROM the language's "
    "image). null: the policy's image, else the language's own.",
)


class ExecuteCodeArgs(ToolArgs):
    """execute_code's arguments (MemoryAPI.execute_code's, with its defaults)."""

    code: str = Field(description="The source code to run, as one string.")
    language: str = Field(
        "python", description=f"The language (case-insensitive): {LANGUAGE_NAMES}."
    )
    parameters: dict[str, Any] | None = Field(
        None,
        description="JSON object handed to the code as data, never as code: python, javascript "
        "and ruby see it as the variable `parameters`; bash as environment variables "
        "PARAMETERS (the JSON) and PARAM_<KEY>. Pass values here instead of formatting them "
        "into the code.",
    )
    timeout_seconds: float | None = _CALL_TIMEOUT
    sandbox_policy: str | dict[str, Any] | None = Field(None, description="(set per tenant)")
    track_resources: bool = Field(
        False, description="Add `resources` to the result: peak memory, CPU time, wall time."
    )
    record: bool = Field(
        True,
        description="Keep the run in memory (recall and get_execution find it, consolidate "
        "learns from it). false: nothing is stored.",
    )
    files: Files = _FILES
    capture_figures: bool = _CAPTURE
    image: str | None = _IMAGE


_SESSION_ID = Field(description="The `session_id` open_session (or replay_session) returned.")
_IDLE = Field(
    600.0,
    description="The session ends after this many seconds without a call (above 0, at most "
    "a week).",
)
_LIFETIME = Field(
    3600.0,
    description="The session ends this many seconds after it opened (above 0, at most a week).",
)


class OpenSessionArgs(ToolArgs):
    """open_session's arguments (MemoryAPI.open_session's)."""

    language: str = Field(
        "python", description="python, javascript or bash (or an alias), case-insensitive."
    )
    sandbox_policy: str | dict[str, Any] | None = Field(None, description="(set per tenant)")
    idle_timeout_seconds: float = _IDLE
    max_lifetime_seconds: float = _LIFETIME
    image: str | None = _IMAGE


class ExecuteInSessionArgs(ToolArgs):
    """execute_in_session's arguments (SandboxSession.execute_code's)."""

    session_id: str = _SESSION_ID
    code: str = Field(description="The source code to run after the session's earlier calls.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="JSON object handed to this call's code as `parameters` (bash: "
        "PARAMETERS and PARAM_<KEY>), never formatted into the code.",
    )
    timeout_seconds: float | None = Field(
        30.0,
        description="Seconds before the call is interrupted (above 0; capped by the policy). "
        "The session's state is kept when the interpreter stops at the interrupt.",
    )
    files: Files = _FILES
    capture_figures: bool = _CAPTURE


class SessionIdArgs(ToolArgs):
    """close_session's arguments."""

    session_id: str = _SESSION_ID


class ReplaySessionArgs(ToolArgs):
    """replay_session's arguments (MemoryAPI.replay_session's)."""

    session_id: str = Field(
        description="The id of a session (open or ended) whose recorded calls to run again."
    )
    idle_timeout_seconds: float = _IDLE
    max_lifetime_seconds: float = _LIFETIME
    files: Files = Field(
        None,
        description="Files written under /workspace before the first call runs again (as "
        "execute_code's `files`): records keep no file content, so give the inputs again.",
    )


def decode_files(files: Mapping[str, str | Base64File] | None) -> dict[str, bytes | str] | None:
    """The ``files`` of a tool call as the library takes them: text as str, base64 as bytes.

    Raises:
        RequestError: a ``base64`` value that is not valid base64 (naming the file).
    """
    if files is None:
        return None
    decoded: dict[str, bytes | str] = {}
    for name, value in files.items():
        if isinstance(value, str):
            decoded[name] = value
            continue
        try:
            decoded[name] = base64.b64decode(value.base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(
                f"files[{json.dumps(name)[:80]}].base64 is not valid base64 ({exc}): encode "
                "the bytes with the standard alphabet and padding, or pass text as a string"
            ) from exc
    return decoded


class RememberArgs(ToolArgs):
    """remember's arguments."""

    content: str = Field(description="The knowledge to keep, as text (not empty).")
    memory_type: str = Field(
        "semantic", description="Free-form kind: semantic, episodic, procedural, preference..."
    )
    context: dict[str, Any] | None = Field(None, description=_CONTEXT)
    tags: list[str] | None = Field(
        None, description="Words to file it under; the tag `pinned` keeps it from decay."
    )


class RecallArgs(ToolArgs):
    """recall's arguments."""

    query: str = Field(description="Words to look for (any text; operators are just words).")
    limit: int = Field(5, description="How many results at most (1..1000).")
    context: dict[str, Any] | None = Field(
        None, description="Only records whose context has each of these key/value pairs."
    )
    kinds: list[str] | None = Field(
        None,
        description=f"Kinds to search: {', '.join(SEARCH_KINDS)} (null: all).",
    )


class RememberEventArgs(ToolArgs):
    """remember_event's arguments."""

    event_type: str = Field(description="Free-form: action, decision, error, observation...")
    content: str = Field(description="What happened.")
    outcome: str | None = Field(
        None, description="Free-form: success, failure, partial, unknown... (or null)."
    )
    context: dict[str, Any] | None = Field(None, description=_CONTEXT)


class RememberProcedureArgs(ToolArgs):
    """remember_procedure's arguments."""

    name: str = Field(description="What the procedure is called.")
    steps: list[str | dict[str, Any]] = Field(
        description="Ordered steps: strings, or objects with a `description` (or `action`), an "
        "optional `name` and optional Python `code` the generated step runs."
    )
    category: str = Field("general", description="Free-form: general, analysis, deployment...")
    context: dict[str, Any] | None = Field(None, description=_CONTEXT)


class ProcedureIdArgs(ToolArgs):
    """generate_procedure_code's arguments."""

    procedure_id: int = Field(description="The id remember_procedure returned.")


class ValidateProcedureCodeArgs(ToolArgs):
    """validate_procedure_code's arguments."""

    code: str = Field(description="Python source to check.")
    procedure_id: int | None = Field(
        None, description="The procedure it implements (checked to exist), or null."
    )


class RememberEntityArgs(ToolArgs):
    """remember_entity's arguments."""

    name: str = Field(description="The entity's name (the same type and name again: same id).")
    entity_type: str = Field(description="Free-form: person, service, dataset, process...")
    context: dict[str, Any] | None = Field(
        None, description="JSON object kept with it, merged over the old one on a repeat."
    )


class ConsolidateArgs(ToolArgs):
    """consolidate's arguments."""

    strategy: str = Field(
        "balanced",
        description=f"From least to most work: {', '.join(STRATEGIES)}.",
    )
    days_back: float = Field(7, description="Learn from the last this many days (above 0).")


class NoArgs(ToolArgs):
    """A tool without arguments."""


class GetExecutionArgs(ToolArgs):
    """get_execution's arguments."""

    execution_id: str = Field(description="The `execution_id` of an execute_code result.")


Call = Callable[["MemoryAPI", "Tenant", Any], dict[str, Any]]


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, description, argument model and the call behind it."""

    name: str
    description: str
    arguments: type[ToolArgs]
    call: Call | None
    read_only: bool = False
    destructive: bool = False

    def input_schema(self, policies: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The JSON schema of the arguments (``sandbox_policy`` listing the tenant's policies)."""
        schema = copy.deepcopy(_schema(self.arguments))
        properties = schema.get("properties", {})
        if "sandbox_policy" in properties:
            chosen = properties["sandbox_policy"]
            chosen["description"] = policy_help(policies)
            if policies:
                chosen["anyOf"][0]["enum"] = [p["name"] for p in policies]
        if "strategy" in properties:
            properties["strategy"]["enum"] = list(STRATEGIES)
        return schema


def _schema(model: type[ToolArgs]) -> dict[str, Any]:
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    schema.pop("title", None)
    schema.pop("description", None)
    schema.setdefault("properties", {})
    inlined: dict[str, Any] = _inlined(_untitled(schema), definitions)
    return inlined


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without pydantic's ``title`` keys (noise for the model that reads it)."""
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.pop("title", None)
    return schema


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with each ``$ref`` to ``#/$defs/...`` replaced by the definition itself.

    Some MCP clients do not follow references in a tool's input schema; ours are small.
    """
    if isinstance(node, list):
        return [_inlined(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        found = copy.deepcopy(definitions[ref.removeprefix("#/$defs/")])
        return _inlined(_untitled(found), definitions)
    return {key: _inlined(value, definitions) for key, value in node.items()}


def policy_help(policies: Sequence[dict[str, Any]]) -> str:
    """What ``sandbox_policy`` accepts, naming each policy the tenant may use and what it allows."""
    lines = [
        "The policy that confines the run: the name of one of the policies below, or an object "
        'that `extends` one of them (e.g. {"extends": "strict", "limits": {"memory_mb": 512}}); '
        "an object may change limits and validation but may not add mounts, widen the network "
        "or weaken the isolation. null: strict (or the first policy below if strict is not "
        "yours). File paths are refused. Policies you may use:"
    ]
    lines += [f"- {_named(p['name'], p['summary'])}" for p in policies]
    return "\n".join(lines)


def _named(name: str, summary: str) -> str:
    return summary if summary.startswith(f"{name}:") else f"{name}: {summary}"


def _id(value: int) -> dict[str, Any]:
    return {"id": value}


def _get_execution(api: MemoryAPI, _tenant: Tenant, args: GetExecutionArgs) -> dict[str, Any]:
    found = api.get_execution(args.execution_id)
    if found is None:
        raise RecordNotFoundError(
            f"no execution has id {args.execution_id!r}: pass the execution_id an "
            "execute_code result gave (runs with record=false are not kept)"
        )
    return found


def tenant_policies(api: MemoryAPI, tenant: Tenant) -> list[dict[str, Any]]:
    """The descriptions (``describe_policy``) of the shipped policies the tenant may use."""
    by_name = {p["name"]: p for p in api.list_policies()}
    return [by_name[name] for name in tenant.policies if name in by_name]


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "execute_code",
        "Run code in a fresh, throwaway sandbox (a container never used before) and return the "
        f"result. Languages: {LANGUAGE_NAMES}. The sandbox_policy decides network, mounts, "
        "limits and which code is refused before it runs (e.g. strict refuses imports such as "
        "socket or subprocess: the result then has error 'Code validation failed' and the "
        "findings in `issues`). Output streams to the client while it runs (progress and log "
        "notifications). The result: success, exit_code, stdout, stderr, violations (what the "
        "sandbox stopped: timeout, memory, network...), error and error_type, issues, output "
        "(python: the value of a top-level variable `output`), execution_id (for "
        "get_execution), execution_time_ms, sandbox_mode, policy, files (what the code wrote "
        "under /workspace/out) and artifacts (python: matplotlib figures as PNG, also shown as "
        "images), their content base64. Each run starts from nothing: use open_session to keep "
        "variables, imports and files from call to call.",
        ExecuteCodeArgs,
        None,
    ),
    ToolSpec(
        "open_session",
        "Open a session: a sandbox of its own whose interpreter keeps state from call to call "
        "(python: globals and imports; javascript: the global scope; bash: working directory, "
        "variables, functions; files under /workspace stay). Run code in it with "
        "execute_in_session and close it with close_session when done; it also ends after "
        "idle_timeout_seconds without a call, after max_lifetime_seconds, at a memory or "
        "process violation, or when your MCP connection ends. Returns the session's info: "
        "session_id, language, policy, created_at, idle_timeout_seconds, max_lifetime_seconds, "
        "calls, state...",
        OpenSessionArgs,
        None,
    ),
    ToolSpec(
        "execute_in_session",
        "Run code in an open session, after its earlier calls (their variables and files are "
        "there). Returns execute_code's result plus session_id and session_state: kept (the "
        "state is there for the next call), restarted (the interpreter ended: the state is "
        "lost, the next call starts fresh) or ended (a memory or process violation ended the "
        "session). A call on a session that has ended is an error saying why; open a new one "
        "or rebuild it with replay_session.",
        ExecuteInSessionArgs,
        None,
    ),
    ToolSpec(
        "close_session",
        "Close a session and remove its sandbox; returns its final info. Closing one that has "
        "already ended is an error saying why it ended.",
        SessionIdArgs,
        None,
        destructive=True,
    ),
    ToolSpec(
        "list_sessions",
        "List your open sessions, oldest first: {sessions: [{session_id, language, policy, "
        "created_at, idle_seconds, age_seconds, idle_timeout_seconds, max_lifetime_seconds, "
        "calls, restarts, busy, state}]}.",
        NoArgs,
        None,
        read_only=True,
    ),
    ToolSpec(
        "replay_session",
        "Open a new session and run the recorded calls of an earlier session (open or ended) "
        "in it, in order, to rebuild its state. Returns {session: the new session's info, "
        "replayed: [the result of each call run again]}. Records keep no input files: give "
        "them again in `files`.",
        ReplaySessionArgs,
        None,
    ),
    ToolSpec(
        "remember",
        "Remember a piece of knowledge for later recall; returns {id}.",
        RememberArgs,
        lambda api, _t, a: _id(api.remember(a.content, a.memory_type, a.context, a.tags)),
    ),
    ToolSpec(
        "recall",
        "Find what memory knows that best matches a query, best first: memories, events, past "
        "runs (executions), procedures and entities. Returns {results: [{id, kind, content, "
        "score (0..1), created_at, type, tags, context}]}.",
        RecallArgs,
        lambda api, _t, a: {"results": api.recall(a.query, a.limit, a.context, a.kinds)},
        read_only=True,
    ),
    ToolSpec(
        "remember_event",
        "Remember something that happened (an action, decision, error...); returns {id}.",
        RememberEventArgs,
        lambda api, _t, a: _id(api.remember_event(a.event_type, a.content, a.outcome, a.context)),
    ),
    ToolSpec(
        "remember_procedure",
        "Remember how to do something, as ordered steps; returns {id} (generate_procedure_code "
        "turns it into Python).",
        RememberProcedureArgs,
        lambda api, _t, a: _id(api.remember_procedure(a.name, a.steps, a.category, a.context)),
    ),
    ToolSpec(
        "generate_procedure_code",
        "Turn a remembered procedure into runnable Python (one function per step, main(), "
        "error handling) and validate it. Returns {success, procedure_id, code, confidence, "
        "validation, issues, ...}; run the code with execute_code.",
        ProcedureIdArgs,
        lambda api, _t, a: api.generate_procedure_code(a.procedure_id),
        read_only=True,
    ),
    ToolSpec(
        "validate_procedure_code",
        "Check Python code without running it: syntax, security (the strict policy's rules), "
        "docstrings, error handling, type hints. Returns {success, quality_score (0..1), "
        "checks, issues, ...}.",
        ValidateProcedureCodeArgs,
        lambda api, _t, a: api.validate_procedure_code(a.code, a.procedure_id),
        read_only=True,
    ),
    ToolSpec(
        "remember_entity",
        "Remember an entity (a person, service, dataset, process...); returns {id}. The same "
        "type and name again returns the same id.",
        RememberEntityArgs,
        lambda api, _t, a: _id(api.remember_entity(a.name, a.entity_type, a.context)),
    ),
    ToolSpec(
        "consolidate",
        "Learn from recent runs and events (pattern memories with counts), merge near-duplicate "
        "memories, decay and prune unused ones. Returns a report of what it did.",
        ConsolidateArgs,
        lambda api, _t, a: api.consolidate(a.strategy, a.days_back),
    ),
    ToolSpec(
        "list_policies",
        "List the sandbox policies you may name in execute_code's sandbox_policy: for each, "
        "its name, a one-sentence summary of what it allows, network, mounts, limits and the "
        "whole config. Returns {policies: [...]}.",
        NoArgs,
        lambda api, tenant, _a: {"policies": tenant_policies(api, tenant)},
        read_only=True,
    ),
    ToolSpec(
        "get_execution",
        "Fetch a recorded run by its execution_id: {execution_id, request (code, language, "
        "parameters, policy, timeout_seconds), result (as execute_code returned it), events "
        "(the output as it streamed)}.",
        GetExecutionArgs,
        _get_execution,
        read_only=True,
    ),
)
TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}


def _cut(text: str, name: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    half = TEXT_LIMIT // 2
    cut = len(text) - 2 * half
    note = f"\n[... {cut} characters cut here; the structured content has the whole {name}]\n"
    return text[:half] + note + text[-half:]


def run_summary(result: dict[str, Any]) -> str:
    """The short text an LLM reads of an execute_code result: outcome, output, what went wrong."""
    outcome = "succeeded" if result.get("success") else "failed"
    lines = [
        f"{outcome}: exit code {result.get('exit_code')}, {result.get('execution_time_ms')} ms, "
        f"{result.get('language')} in {result.get('sandbox_mode')}, "
        f"execution_id {result.get('execution_id')}"
    ]
    if result.get("session_id"):
        lines.append(f"session {result['session_id']}: state {result.get('session_state')}")
    for name in ("stdout", "stderr"):
        text = result.get(name) or ""
        if text:
            lines.append(f"--- {name} ---\n{_cut(text, name).rstrip(chr(10))}")
    if result.get("output") is not None:
        lines.append(f"output: {json.dumps(result['output'], ensure_ascii=False)}")
    lines += [f"violation: {v}" for v in result.get("violations") or ()]
    lines += [f"issue: {i.get('message', i)}" for i in result.get("issues") or ()]
    if result.get("error"):
        lines.append(f"error ({result.get('error_type')}): {result['error']}")
    return "\n".join(lines)
