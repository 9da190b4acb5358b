"""The container blueprints of each (language, policy, mounts, image), shared by runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from typing import Any

from orchestrator.backends.docker.compile import (
    IMAGE_PROTOCOL_LABEL,
    RUNSC,
    choose_runtime,
    compile_docker,
)
from orchestrator.backends.docker.egress import EgressSetup
from orchestrator.backends.docker.engine import Engine
from orchestrator.backends.docker.errors import map_docker_errors
from orchestrator.backends.docker.owners import owner_labels
from orchestrator.backends.docker.sandbox import Blueprint, PoolKey
from orchestrator.backends.hostsfile import hosts_file
from orchestrator.backends.mountstage import MountStage
from orchestrator.backends.protocol import PROTOCOL
from orchestrator.custom_images import (
    IMAGE_LANGUAGE_LABEL,
    ImageChoice,
    choose_image,
    label_problem,
    labels_digest,
    missing,
    refused,
)
from orchestrator.errors import BackendUnavailableError, ImageNotFoundError
from orchestrator.languages import get_language
from orchestrator.policy import Policy, ResolvedMount
from orchestrator.run import RunSpec
from orchestrator.settings import Settings

# (language, policy, mounts, image reference, digest of a custom image's labels)
_RequestKey = tuple[str, Policy, tuple[ResolvedMount, ...], str, str]


class Blueprints:
    """Builds and keeps the blueprint of each (language, policy, mounts, image).

    Thread-safe: ``_lock`` guards ``_by_request``, ``_by_key``, ``_images_ok``, ``_runtimes``
    and ``_hosts``. Two threads may build the same blueprint at once; the first one kept wins.

    Args:
        settings: image names.
        egress: the egress set-up, for allowlist policies.
        stage: stages mount sources for gVisor.
    """

    def __init__(self, settings: Settings, egress: EgressSetup, stage: MountStage) -> None:
        self._settings, self._egress, self._stage = settings, egress, stage
        self._lock = threading.Lock()
        self._by_request: dict[_RequestKey, Blueprint] = {}
        self._by_key: dict[PoolKey, Blueprint] = {}
        self._images_ok: set[str] = set()
        self._runtimes: frozenset[str] | None = None
        self._hosts: tuple[str | None] | None = None  # (hosts file or None), once decided

    def get(self, key: PoolKey) -> Blueprint:
        """The blueprint of a pool key (one that :meth:`build` returned)."""
        with self._lock:
            return self._by_key[key]

    def build(
        self,
        engine: Engine,
        language: str,
        policy: Policy,
        spec: RunSpec,
        image: str | None = None,
    ) -> Blueprint:
        """Return the blueprint of (language, policy, mounts, image), built at the first call.

        The image is ``image`` (the call's), else the policy's ``image``, else the language's
        own. A custom image's labels are read at every call (one image inspect): a tag rebuilt
        with other labels (``build-image`` labels each build with its definition) gets a blueprint
        and a warm pool of its own, and is checked again.

        Raises:
            ImageNotFoundError: the image is missing, or the language's own image speaks
                another runner protocol.
            ImageRefusedError: a custom image's labels refuse it (another runner protocol,
                another language, not built FROM ours): a ``RequestError`` when the call chose
                it, a ``PolicyError`` when the policy did.
            BackendUnavailableError: the policy requires gVisor and the engine has none.
            SandboxError: the engine failed.
        """
        default = self._settings.image_ref(get_language(language).image)
        choice = choose_image(image, policy.image, default)
        labels = self._custom_labels(engine, choice) if choice.custom else None
        identity = labels_digest(labels) if labels is not None else ""
        cache_key = (language, policy, spec.mounts, choice.reference, identity)
        with self._lock:
            known, hosts = self._by_request.get(cache_key), self._hosts
        if hosts is not None and hosts[0] is not None and not os.path.exists(hosts[0]):
            hosts_file()  # a cleaner of the temporary directory took it: the engine needs it
        if known is not None:
            return known
        if labels is None:
            self._check_image(engine, default, language)
        elif (problem := label_problem(choice.reference, labels, language, default)) is not None:
            raise refused(choice, language, problem)
        blueprint = self._compile(engine, language, policy, spec, choice.reference, identity)
        with self._lock:
            self._by_key.setdefault(blueprint.key, blueprint)
            return self._by_request.setdefault(cache_key, blueprint)

    def _compile(
        self,
        engine: Engine,
        language: str,
        policy: Policy,
        spec: RunSpec,
        image: str,
        identity: str,
    ) -> Blueprint:
        labels = {
            **owner_labels(self._settings.node_id),
            "athena.language": language,
            "athena.policy": policy.name,
        }
        route = None
        if policy.network.mode == "allowlist":
            route = self._egress.route(engine.egress_gateway)
        runtime = self._runtime(engine, policy)
        if runtime.startswith(RUNSC) and spec.mounts:
            spec = dataclasses.replace(spec, mounts=self._staged(spec.mounts))
        config = compile_docker(
            policy,
            spec,
            image=image,
            labels=labels,
            route=route,
            container_runtime=runtime,
            language=language,
            hosts_file=self._hosts_file(engine) if policy.network.mode == "none" else None,
        )
        body = engine.container_body(config["create"], config["host_config"])
        key = (language, _fingerprint(body, identity))
        return Blueprint(key, image, body, route is not None, runtime)

    def _custom_labels(self, engine: Engine, choice: ImageChoice) -> dict[str, str]:
        """A custom image's labels, asked at each call: the tag may have been rebuilt."""
        try:
            with map_docker_errors("inspect the image", choice.reference):
                return engine.image_labels(choice.reference)
        except ImageNotFoundError as exc:
            raise missing(choice) from exc

    def _runtime(self, engine: Engine, policy: Policy) -> str:
        with self._lock:
            registered = self._runtimes
        if registered is None:
            with map_docker_errors("ask the engine for its runtimes"):
                registered = engine.runtimes()
            with self._lock:
                self._runtimes = registered
        runtime = choose_runtime(policy, registered)
        if runtime is None:
            raise BackendUnavailableError(
                f"policy {policy.name!r} requires gVisor, and the Docker engine has no runsc "
                "runtime: run `make gvisor` (installs runsc and registers it with dockerd)"
            )
        return runtime

    def _hosts_file(self, engine: Engine) -> str | None:
        """The hosts file sandboxes without a network bind, when the engine can (decided once).

        None for an engine on another host (it cannot see our file) or when no safe place can
        hold the file: those sandboxes get Docker's ``none`` network instead.
        """
        with self._lock:
            decided = self._hosts
        if decided is None:
            decided = (hosts_file() if engine.local() else None,)
            with self._lock:
                self._hosts = decided
        return decided[0]

    def _staged(self, mounts: tuple[ResolvedMount, ...]) -> tuple[ResolvedMount, ...]:
        """The mounts with sources gVisor's engine can bind safely (see ``mountstage``)."""
        return tuple(
            dataclasses.replace(m, source=self._stage.stage(m.source, m.device, m.inode))
            for m in mounts
        )

    def _check_image(self, engine: Engine, image: str, language: str) -> None:
        """Check a language's own image once (the first run of each process builds on it)."""
        with self._lock:
            if image in self._images_ok:
                return
        with map_docker_errors("inspect the sandbox image", image):
            labels = engine.image_labels(image)
        if labels.get(IMAGE_PROTOCOL_LABEL) != PROTOCOL:
            raise ImageNotFoundError(
                f"the sandbox image {image} speaks runner protocol "
                f"{labels.get(IMAGE_PROTOCOL_LABEL)!r}, this orchestrator needs {PROTOCOL!r}: "
                "run `make images` to rebuild it"
            )
        served = labels.get(IMAGE_LANGUAGE_LABEL, language)  # older images had no such label
        if served != language:
            raise ImageNotFoundError(
                f"the sandbox image {image} serves {served}, not {language}: "
                "run `make images` to rebuild it"
            )
        with self._lock:
            self._images_ok.add(image)


def _fingerprint(body: dict[str, Any], identity: str = "") -> str:
    """What tells containers apart in the pool: the create body without its labels.

    ``identity`` tells builds of one custom image tag apart (the digest of their labels), so
    a rebuilt image never gets a warm container of the build before.
    """
    return hashlib.sha256(
        json.dumps({**body, "Labels": None, "Identity": identity}, sort_keys=True).encode()
    ).hexdigest()[:16]
