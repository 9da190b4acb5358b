"""The request a runner reads, built from an :class:`ExecutionRequest` (docker and fast modes)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.backends.protocol import (
    FLAG_FIGURES,
    encode_argv,
    encode_request,
    new_nonce,
    session_nonce,
)
from orchestrator.files import FIGURES_DIR, encode_files
from orchestrator.guard import runtime_guard
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest
from orchestrator.packages import install_argv, install_plan
from orchestrator.run import RunSpec
from orchestrator.settings import Settings


@dataclass(frozen=True)
class Message:
    """The encoded request and the nonce the runner's own reports carry."""

    payload: bytes
    nonce: str


def runner_message(
    request: ExecutionRequest,
    spec: RunSpec,
    settings: Settings,
    *,
    session_key: bytes | None = None,
    call: int = 0,
) -> Message:
    """The request as the runner reads it, with a fresh nonce for its reports.

    In a session (``session_key``, the ``call``-th call): the nonce derived for that call; the
    header carries the session's key (first call) or the call's number.
    """
    language = get_language(request.language)
    figures = request.capture_figures and language.figures
    nonce = header_nonce = new_nonce()
    if session_key is not None:
        nonce = session_nonce(session_key, call)
        header_nonce = session_key.hex() if call == 0 else f"{call:x}"
    payload = encode_request(
        request.code.encode("utf-8", errors="surrogatepass"),
        language.request_blob(
            request.parameters,
            runtime_guard(request.policy, request.language),
            FIGURES_DIR if figures else None,
            install_plan(request.requirements, request.language, settings),
        ),
        max(1, round(spec.timeout_seconds * 1000)),  # 0 would mean "no deadline"
        request.policy.limits.max_output_bytes,
        header_nonce,
        encode_files(request.files),
        request.policy.files.max_out_bytes,
        FLAG_FIGURES if figures else 0,
        encode_argv(install_argv(request.requirements, request.language, settings)),
    )
    return Message(payload, nonce)
