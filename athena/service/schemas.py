"""Request bodies of the HTTP API (responses: :mod:`athena.service.responses`).

Request bodies forbid unknown fields and take values as they are: a string where a number is
wanted is a 422 naming the field, never silently converted. Ranges (a limit of 1..1000, a
timeout above 0) are the local API's to check: it answers 400 with what to change.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.convertors import Convertor, register_url_convertor

from athena.sessions import DEFAULT_CALL_TIMEOUT

# An int stays an int (the local API's messages show the value as given: ``-1``, not ``-1.0``).
StrictNumber = StrictInt | StrictFloat
MAX_BATCH_CALLS = 1_000  # a batch over HTTP (HumanEval is 164); a longer evaluation sends several
MAX_ID = 2**63 - 1  # record ids are 64-bit in both stores
RecordId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
Context = dict[str, Any]
PolicySpec = StrictStr | dict[str, Any] | None


class _AnyText(Convertor[str]):
    """A path parameter of any text, slashes and newlines included (``{name:text}``).

    Starlette's ``path`` convertor is ``.*``, which stops at a newline (``/v1/policies/a%0Ab``
    matched no route, and ``strict%0A`` was looked up as ``strict``); the API's own checks
    answer for such names, as the local API does.
    """

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("text", _AnyText())  # before the routers that use it are built


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- requests


class FileBytes(_Body):
    """A file's bytes, base64-encoded (standard alphabet, with padding)."""

    base64: StrictStr


InputFiles = dict[StrictStr, StrictStr | FileBytes] | None
_FILES_DESCRIPTION = (
    "Files written under /workspace before the code starts: relative name -> text (written "
    'as UTF-8) or {"base64": "..."} (bytes). At most the policy\'s files.max_in_bytes in all.'
)


class ExecuteBody(_Body):
    """The arguments of ``execute_code`` (the streaming and batch forms take the same)."""

    code: StrictStr
    language: StrictStr = "python"
    parameters: dict[str, Any] | None = None
    timeout_seconds: StrictNumber | None = None
    sandbox_policy: PolicySpec = Field(
        None, description="A policy name the tenant may use, or a dict that `extends` one."
    )
    track_resources: StrictBool = False
    record: StrictBool = True
    files: InputFiles = Field(None, description=_FILES_DESCRIPTION)
    capture_figures: StrictBool = True
    image: StrictStr | None = Field(
        None, description="A custom image built with `athena-sandbox build-image`."
    )
    requirements: list[StrictStr] | None = Field(
        None, description="Packages installed before the code starts (pip or npm specs)."
    )


class OpenSessionBody(_Body):
    """The arguments of ``open_session``."""

    language: StrictStr = "python"
    sandbox_policy: PolicySpec = Field(
        None, description="A policy name the tenant may use, or a dict that `extends` one."
    )
    idle_timeout_seconds: StrictNumber = 600
    max_lifetime_seconds: StrictNumber = 3600
    image: StrictStr | None = None
    requirements: list[StrictStr] | None = Field(
        None, description="Packages installed before the code starts (pip or npm specs)."
    )


class SessionExecuteBody(_Body):
    """The arguments of a session's ``execute_code``."""

    code: StrictStr
    parameters: dict[str, Any] | None = None
    timeout_seconds: StrictNumber | None = DEFAULT_CALL_TIMEOUT
    files: InputFiles = Field(None, description=_FILES_DESCRIPTION)
    capture_figures: StrictBool = True
    track_resources: StrictBool = False
    record: StrictBool = True
    requirements: list[StrictStr] | None = Field(
        None, description="Packages installed before the code starts (pip or npm specs)."
    )


class ReplayBody(_Body):
    """The arguments of ``replay_session`` (the session's id is in the path)."""

    idle_timeout_seconds: StrictNumber = 600
    max_lifetime_seconds: StrictNumber = 3600
    files: InputFiles = Field(
        None, description="Written before the first replayed call (records keep no contents)."
    )


class BatchBody(_Body):
    """The arguments of ``execute_code_batch``."""

    calls: list[ExecuteBody] = Field(max_length=MAX_BATCH_CALLS)
    concurrency: StrictInt = 4


class PrewarmBody(_Body):
    """The arguments of ``prewarm``."""

    language: StrictStr = "python"
    sandbox_policy: PolicySpec = None


class RememberBody(_Body):
    """The arguments of ``remember``."""

    content: StrictStr
    memory_type: StrictStr = "semantic"
    context: Context | None = None
    tags: StrictStr | list[StrictStr] | None = Field(
        None, description="Words to file it under: a list, or one word as a string."
    )


class RecallBody(_Body):
    """The arguments of ``recall``."""

    query: StrictStr
    limit: StrictInt = 5
    context: Context | None = None
    kinds: StrictStr | list[StrictStr] | None = Field(
        None, description="Kinds to search (memory, event, execution, procedure, entity)."
    )


class EventBody(_Body):
    """The arguments of ``remember_event``."""

    event_type: StrictStr
    content: StrictStr
    outcome: StrictStr | None = None
    context: Context | None = None


class EventSearchBody(_Body):
    """The arguments of ``recall_events`` (dates as ISO 8601 strings)."""

    query: StrictStr | None = None
    event_type: StrictStr | None = None
    start_date: StrictStr | None = None
    end_date: StrictStr | None = None
    limit: StrictInt = 10


class ProcedureBody(_Body):
    """The arguments of ``remember_procedure``."""

    name: StrictStr
    steps: list[StrictStr | dict[str, Any]]
    category: StrictStr = "general"
    context: Context | None = None


class GenerateBody(_Body):
    """``generate_procedure_code`` takes nothing more over the wire (no custom generator)."""


class ValidateBody(_Body):
    """The arguments of ``validate_procedure_code``."""

    code: StrictStr
    procedure_id: RecordId | None = None


class EntityBody(_Body):
    """The arguments of ``remember_entity``."""

    name: StrictStr
    entity_type: StrictStr
    context: Context | None = None


class RelationBody(_Body):
    """The arguments of ``relate_entities``."""

    source_id: RecordId
    target_id: RecordId
    relation_type: StrictStr
    context: Context | None = None


class ConsolidateBody(_Body):
    """The arguments of ``consolidate``."""

    strategy: StrictStr = "balanced"
    days_back: StrictNumber = 7
