"""athena-sandbox's orchestrator: run untrusted code in throwaway per-language containers.

The typed core. Most callers use ``athena.mcp.memory_api.MemoryAPI`` (a dict API that also
records every run); this package is for those who want the models, the policies and the
orchestrator themselves.
"""

from orchestrator.backends.base import Backend
from orchestrator.backends.docker import DockerBackend, compile_docker
from orchestrator.context import ExecutionContext
from orchestrator.errors import (
    BackendUnavailableError,
    CodeNotAcceptedError,
    ImageBuildError,
    ImageNotFoundError,
    PolicyError,
    PolicyNotFoundError,
    QueueFullError,
    RequestError,
    RunCancelledError,
    RunError,
    SandboxError,
    SandboxFailedError,
    SessionEndedError,
    UnknownLanguageError,
)
from orchestrator.languages import LANGUAGES, Language, get_language
from orchestrator.models import (
    Event,
    ExecutionRequest,
    ExecutionResult,
    Isolation,
    Resources,
    ValidationIssue,
    Violation,
)
from orchestrator.orchestrator import Orchestrator, Recorder
from orchestrator.policy import Policy, load_policy, resolve_mounts, shipped_policy_names
from orchestrator.run import CancelToken, RunOutcome, RunSpec
from orchestrator.settings import Settings
from orchestrator.validator import CodeValidator

__all__ = [
    "LANGUAGES",
    "Backend",
    "BackendUnavailableError",
    "CancelToken",
    "CodeNotAcceptedError",
    "CodeValidator",
    "DockerBackend",
    "Event",
    "ExecutionContext",
    "ExecutionRequest",
    "ExecutionResult",
    "ImageBuildError",
    "ImageNotFoundError",
    "Isolation",
    "Language",
    "Orchestrator",
    "Policy",
    "PolicyError",
    "PolicyNotFoundError",
    "QueueFullError",
    "Recorder",
    "RequestError",
    "Resources",
    "RunCancelledError",
    "RunError",
    "RunOutcome",
    "RunSpec",
    "SandboxError",
    "SandboxFailedError",
    "SessionEndedError",
    "Settings",
    "UnknownLanguageError",
    "ValidationIssue",
    "Violation",
    "compile_docker",
    "get_language",
    "load_policy",
    "resolve_mounts",
    "shipped_policy_names",
]
