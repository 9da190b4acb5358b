"""Custom sandbox images: a Dockerfile `FROM athena-sandbox/<language>`, checked before runs.

A custom image adds what a user's runs need (a module, a data file, a tool) to one of our
language images. It keeps that image's runner and labels (``org.athena.protocol``, the runner
protocol; ``org.athena.language``, the language it serves), and the labels are how a run knows
the image can take it. A call (``image=``) or a policy (``image:``) selects it; the call wins,
and the language's own image is the default (:func:`choose_image`).

Before a run the image's labels are checked (:func:`label_problem`). An image that is missing is
a :class:`~orchestrator.errors.ImageNotFoundError` (a ``RunError``: the run could not happen). An
image refused by its labels is the caller's mistake: :class:`ImageRefusedError`, raised as
:class:`CallImageRefusedError` (a ``RequestError``) when the call named it and as
:class:`PolicyImageRefusedError` (a ``PolicyError``) when the policy did.

The check is about compatibility, not security: whoever builds an image can write any labels.
What contains a run is the container's settings (user, capabilities, limits, runtime), which
are the policy's whatever the image.

:func:`build_custom` builds a custom image with the Engine API and refuses (removing the tag)
one whose Dockerfile did not start ``FROM`` one of our images.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors

from orchestrator.backends.docker.compile import IMAGE_PROTOCOL_LABEL
from orchestrator.backends.docker.errors import map_docker_errors, unavailable
from orchestrator.backends.protocol import PROTOCOL
from orchestrator.errors import (
    ImageBuildError,
    ImageNotFoundError,
    PolicyError,
    RequestError,
    SandboxError,
    UnknownLanguageError,
)
from orchestrator.images import definition_hash
from orchestrator.languages import get_language
from orchestrator.policy import IMAGE_REF_PATTERN
from orchestrator.settings import Settings

IMAGE_LANGUAGE_LABEL = "org.athena.language"
CUSTOM_DEFINITION_LABEL = "org.athena.custom-definition"
BUILD_HINT = "athena-sandbox build-image"
Progress = Callable[[str], None]
ImageOrigin = Literal["call", "policy", "language"]


class ImageRefusedError(SandboxError, ValueError):
    """An image cannot take runs of this language (its labels say so); the message says why.

    Raised as :class:`CallImageRefusedError` or :class:`PolicyImageRefusedError`, after who
    chose the image; ``except ImageRefusedError`` catches both.

    Attributes:
        image: the image reference.
        language: the run's language.
    """

    def __init__(self, message: str, *, image: str = "", language: str = "") -> None:
        super().__init__(message)
        self.image = image
        self.language = language


class CallImageRefusedError(ImageRefusedError, RequestError):
    """The call's ``image=`` is refused: fix the call."""


class PolicyImageRefusedError(ImageRefusedError, PolicyError):
    """The policy's ``image:`` is refused: fix the policy."""


@dataclass(frozen=True)
class ImageChoice:
    """The image a run uses and who chose it.

    Attributes:
        reference: the image reference.
        origin: ``call`` (``image=``), ``policy`` (``image:``) or ``language`` (the default).
    """

    reference: str
    origin: ImageOrigin

    @property
    def custom(self) -> bool:
        """Whether it is not the language's own image."""
        return self.origin != "language"


def choose_image(call: str | None, policy: str | None, default: str) -> ImageChoice:
    """The call's image, else the policy's, else the language's own (pure).

    An image equal to ``default`` counts as the language's own (a call naming it overrides
    the policy's image).
    """
    chosen = call if call is not None else policy
    if chosen is None or chosen == default:
        return ImageChoice(default, "language")
    return ImageChoice(chosen, "call" if call is not None else "policy")


def label_problem(
    reference: str, labels: Mapping[str, str], language: str, base: str
) -> str | None:
    """What keeps ``reference`` from running ``language`` code, or None (pure).

    Args:
        reference: the image, as named in the message.
        labels: its labels.
        language: the run's language.
        base: the language's own image (``athena-sandbox/<language>:latest``), for the advice.
    """
    protocol = labels.get(IMAGE_PROTOCOL_LABEL)
    served = labels.get(IMAGE_LANGUAGE_LABEL)
    if protocol is None or served is None:
        return (
            f"image {reference!r} has no runner of ours (no {IMAGE_PROTOCOL_LABEL} or "
            f"{IMAGE_LANGUAGE_LABEL} label): it was not built FROM {base}; start its Dockerfile "
            f"with `FROM {base}` and build it with `{BUILD_HINT} {reference} DIR`"
        )
    if protocol != PROTOCOL:
        return (
            f"image {reference!r} speaks runner protocol {protocol!r}, this orchestrator needs "
            f"{PROTOCOL!r}: it was built FROM an older {base}; run `athena-sandbox images`, then "
            f"build it again with `{BUILD_HINT} {reference} DIR`"
        )
    if served != language:
        return (
            f"image {reference!r} serves {served}, not {language}: use it for {served} runs, "
            f"or give this {language} run an image built FROM {base}"
        )
    return None


def refused(choice: ImageChoice, language: str, problem: str) -> ImageRefusedError:
    """The refusal of a custom image, typed after who chose it."""
    kind = CallImageRefusedError if choice.origin == "call" else PolicyImageRefusedError
    return kind(
        f"{_whose(choice)} is refused: {problem}", image=choice.reference, language=language
    )


def missing(choice: ImageChoice) -> ImageNotFoundError:
    """The error of a custom image that does not exist, saying how to build it."""
    return ImageNotFoundError(
        f"{_whose(choice)} {choice.reference!r} does not exist: build it "
        f"with `{BUILD_HINT} {choice.reference} DIR` (DIR holds a Dockerfile starting "
        "FROM athena-sandbox/<language>)"
    )


def _whose(choice: ImageChoice) -> str:
    return {"call": "the call's image", "policy": "the policy's image"}.get(
        choice.origin, "the language's image"
    )


def labels_digest(labels: Mapping[str, str]) -> str:
    """A short digest of an image's labels: a rebuilt image with other labels gets another."""
    return hashlib.sha256(json.dumps(dict(labels), sort_keys=True).encode()).hexdigest()[:16]


def served_language(reference: str, labels: Mapping[str, str], prefix: str) -> str:
    """The language a freshly built image serves (pure).

    Raises:
        ImageBuildError: the labels show it was not built FROM one of our language images of
            this orchestrator's runner protocol.
    """
    served = labels.get(IMAGE_LANGUAGE_LABEL)
    try:
        language = get_language(served or "")
    except UnknownLanguageError:
        language = None
    if language is None or labels.get(IMAGE_PROTOCOL_LABEL) is None:
        raise ImageBuildError(
            f"{reference} was not built FROM one of our images (it has no {IMAGE_PROTOCOL_LABEL} "
            f"and {IMAGE_LANGUAGE_LABEL} labels of ours): start the Dockerfile with "
            f"`FROM {prefix}/<language>:latest` (python, javascript, bash or ruby)"
        )
    problem = label_problem(reference, labels, language.name, f"{prefix}/{language.image}:latest")
    if problem is not None:
        raise ImageBuildError(problem)
    return language.name


def build_custom(
    name: str,
    directory: Path,
    *,
    no_cache: bool = False,
    pull: bool = False,
    settings: Settings | None = None,
    progress: Progress = print,
    client: docker.DockerClient | None = None,
) -> str:
    """Build ``directory/Dockerfile`` as the image ``name``; return the language it serves.

    After the build the image's labels are checked; an image not built FROM one of our
    language images (or FROM one of another runner protocol) is refused and its tag removed.

    Args:
        name: the image reference (``name`` or ``name:tag``), not under our own prefix.
        directory: the build context, holding the Dockerfile.
        no_cache: build every step again.
        pull: pull newer base images first (needs a registry; our images are local).
        settings: our image prefix (default: from the environment).
        progress: called with each line of progress.
        client: a docker-py client (default: from the environment).

    Raises:
        ImageBuildError: the name or directory is wrong, the build failed, or the image is not
            built FROM one of ours.
        BackendUnavailableError: no Docker engine answers.
    """
    prefix = (settings or Settings()).image_prefix
    _check_build_args(name, directory, prefix)
    try:
        client = client or docker.from_env(timeout=600)
    except docker.errors.DockerException as exc:
        raise unavailable(exc) from exc
    api = client.api
    progress(f"[build-image] building {name} from {directory} ...")
    with map_docker_errors(f"build {directory}"):
        stream = api.build(
            path=str(directory),
            tag=name,
            nocache=no_cache,
            pull=pull,
            rm=True,
            forcerm=True,
            decode=True,
            labels={CUSTOM_DEFINITION_LABEL: definition_hash(directory)},
        )
        for chunk in stream:
            _report(chunk, name, progress)
        labels = (api.inspect_image(name).get("Config") or {}).get("Labels") or {}
    try:
        return served_language(name, labels, prefix)
    except ImageBuildError:
        with suppress(docker.errors.APIError):  # gone already: nothing is left either way
            api.remove_image(name)
        raise


def _check_build_args(name: str, directory: Path, prefix: str) -> None:
    if not re.fullmatch(IMAGE_REF_PATTERN, name) or len(name) > 255:
        raise ImageBuildError(
            f"{name!r} is not an image name: lower-case letters, digits and ._/- , "
            "optionally with a :tag (e.g. 'my-python:1')"
        )
    if name.startswith(f"{prefix}/"):
        raise ImageBuildError(
            f"{name!r} is under {prefix}/, which holds our own images: choose another name"
        )
    if not (directory / "Dockerfile").is_file():
        raise ImageBuildError(f"{directory} holds no Dockerfile")


def _report(chunk: dict[str, Any], name: str, progress: Progress) -> None:
    if "error" in chunk:
        raise ImageBuildError(f"building {name} failed: {str(chunk['error']).strip()}")
    text = str(chunk.get("stream", "")).rstrip()
    if text and not text.startswith(" ---> "):
        progress(f"[build-image] {text}")
