"""Tool results of the MCP server: structured content, a compact text block, and figures.

Every tool answers with structured content (a JSON object) and one text block an LLM reads;
a caller mistake is a tool error (``isError``) whose text says what to change
(:func:`failure`). A run's result (:func:`run_result`) also carries what the run returned:

- ``files`` and ``artifacts`` keep ``{name, size, sha256, mime_type, content}`` with
  ``content`` as a base64 string (JSON has no bytes);
- each PNG artifact (a matplotlib figure) comes once more as an MCP image block, so a client
  such as Claude shows the plot; the text block only names the files and figures.

One message must stay under the 1 MiB the SDK's HTTP client accepts (see
:mod:`.mcp_limits`), so images take at most :data:`IMAGE_BUDGET` bytes of base64, file
contents what that leaves of :data:`~.mcp_limits.STRUCTURED_BUDGET` (smallest first), and the
rest of the result is cut by :func:`~.mcp_limits.fit`. A file whose content did not fit keeps
its name, size and digest, with ``content: null`` and ``content_omitted`` saying why.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import mcp_types as types

from athena.service import wire
from athena.service.mcp_limits import STRUCTURED_BUDGET, TEXT_BUDGET, cut_text, fit, json_size
from orchestrator.errors import SandboxError

IMAGE_BUDGET = 256 * 1024
"""The most base64 characters the image blocks of one result may take together."""
MIN_STRUCTURED = 256 * 1024
"""What the structured content keeps of its budget however many images came."""
BLOB_KEYS = ("files", "artifacts")
"""The keys of a result whose items carry bytes (``content``)."""
OMITTED = (
    "too large for one MCP message with the rest of this result (clients refuse messages "
    "over 1 MiB); write less under /workspace/out, or call the HTTP API or the library"
)


def success(data: dict[str, Any], summary: Callable[[dict[str, Any]], str]) -> types.CallToolResult:
    """The tool result of ``data`` (JSON-safe), cut to fit one message (see :mod:`.mcp_limits`)."""
    fitted = fit(data)
    text = cut_text(summary(fitted), TEXT_BUDGET, "the result")
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=fitted, is_error=False
    )


def failure(exc: SandboxError) -> types.CallToolResult:
    """A tool error: ``<ErrorType>: <message>`` as text, the wire envelope as structured content."""
    name = wire.wire_name(exc)
    return types.CallToolResult(
        content=[types.TextContent(text=f"{name}: {exc}")],
        structured_content=wire.envelope(name, str(exc)),
        is_error=True,
    )


def as_text(data: dict[str, Any]) -> str:
    """The text block of a plain tool's result: its JSON."""
    return json.dumps(data, ensure_ascii=False, default=str)


def run_result(
    result: dict[str, Any], summary: Callable[[dict[str, Any]], str]
) -> types.CallToolResult:
    """The tool result of a run: JSON-safe structured content, compact text, PNGs as images.

    Args:
        result: a result dict of the library (``content`` of files and artifacts as bytes).
        summary: the text an LLM reads of the (JSON-safe) result.
    """
    images = _images(result.get("artifacts") or ())
    shown = sum(len(image.data) for image, _name in images)
    budget = max(STRUCTURED_BUDGET - shown, MIN_STRUCTURED)
    structured = encode_blobs(result, budget)
    lines = [summary(structured), *file_lines(structured, {name for _image, name in images})]
    text = cut_text("\n".join(lines), TEXT_BUDGET, "the result")
    content: list[types.TextContent | types.ImageContent] = [types.TextContent(text=text)]
    return types.CallToolResult(
        content=[*content, *(image for image, _name in images)],
        structured_content=structured,
        is_error=False,
    )


def _images(artifacts: Any) -> list[tuple[types.ImageContent, str]]:
    """Image blocks of the PNG artifacts (with their names), while they fit the budget."""
    images: list[tuple[types.ImageContent, str]] = []
    room = IMAGE_BUDGET
    for item in artifacts:
        content = item.get("content")
        if item.get("mime_type") != "image/png" or not isinstance(content, bytes):
            continue
        data = base64.b64encode(content).decode("ascii")
        if len(data) > room:
            continue
        room -= len(data)
        images.append((types.ImageContent(data=data, mime_type="image/png"), item.get("name")))
    return images


def encode_blobs(result: dict[str, Any], budget: int = STRUCTURED_BUDGET) -> dict[str, Any]:
    """``result`` as JSON-safe structured content of at most about ``budget`` bytes.

    The contents of ``files`` and ``artifacts`` become base64 strings; those that do not fit
    (the largest go first) become ``null`` with ``content_omitted``. The rest of the result is
    cut by :func:`fit` into what the kept contents leave.
    """
    blobs = {key: [dict(item) for item in result.get(key) or ()] for key in BLOB_KEYS}
    encoded = {
        id(item): base64.b64encode(item["content"]).decode("ascii")
        for items in blobs.values()
        for item in items
        if isinstance(item.get("content"), bytes)
    }
    for items in blobs.values():
        for item in items:
            item["content"] = None
    rest = {**result, **{key: blobs[key] for key in BLOB_KEYS if key in result}}
    # The result without any content: what it needs at least (its texts cut to a quarter).
    room = budget - min(json_size(rest), budget // 4)
    for item in sorted(
        (i for items in blobs.values() for i in items if id(i) in encoded),
        key=lambda i: len(encoded[id(i)]),
    ):
        size = len(encoded[id(item)]) + 16
        if size <= room:
            room -= size
            item["content"] = encoded[id(item)]
        else:
            item["content_omitted"] = OMITTED
    kept = sum(len(i["content"]) for items in blobs.values() for i in items if i["content"])
    return _fit_around_blobs(rest, blobs, budget - kept)


def _fit_around_blobs(
    rest: dict[str, Any], blobs: dict[str, list[dict[str, Any]]], budget: int
) -> dict[str, Any]:
    """Cut ``rest`` to ``budget`` with the contents out of reach of :func:`fit`'s cuts."""
    contents = {key: [item.get("content") for item in items] for key, items in blobs.items()}
    for items in blobs.values():
        for item in items:
            item["content"] = None
    fitted = fit(rest, max(budget, 1024))
    for key, values in contents.items():
        cut = fitted.get(key)
        if not isinstance(cut, list) or len(cut) != len(values):
            continue  # fit cut the list itself: its contents stay out
        fitted[key] = [{**item, "content": value} for item, value in zip(cut, values, strict=True)]
    return fitted


def file_lines(result: dict[str, Any], shown: set[str]) -> list[str]:
    """One line per file and figure a run returned, for the text block (never the content).

    Args:
        result: the structured content of a run.
        shown: the names of the figures sent as image blocks.
    """
    lines = []
    for item in result.get("files") or ():
        lines.append(f"file out/{item.get('name')}: {_described(item)}")
    for item in result.get("artifacts") or ():
        image = " (shown as an image)" if item.get("name") in shown else ""
        lines.append(f"figure {item.get('name')}: {_described(item)}{image}")
    return lines


def _described(item: dict[str, Any]) -> str:
    where = "content in the structured result" if item.get("content") else "content omitted"
    return f"{item.get('size')} bytes, {item.get('mime_type')}, {where}"
