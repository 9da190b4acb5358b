"""The suite's leftover check counts only this test process's containers, not another user's."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import docker
import docker.errors
import pytest

from orchestrator.backends.docker.owners import (
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_SANDBOX,
    owner_is_dead,
    owner_labels,
    process_start_ticks,
)
from tests.integration.conftest import owned_by

pytestmark = pytest.mark.docker


def _idle(docker_client: docker.DockerClient, labels: dict[str, str]) -> Any:
    """A created (never started) sandbox-labelled container: enough for the label filter."""
    return docker_client.containers.create(
        "athena-sandbox/bash:latest",
        entrypoint=["sleep", "300"],
        labels=labels,
        network_mode="none",
        user="65534:65534",
    )


def test_leftover_check_ignores_a_live_other_owner(docker_client: docker.DockerClient) -> None:
    """A sandbox container of another live process on the engine is not counted; ours is."""
    parent = os.getppid()  # alive for as long as this test runs: a real other owner
    other_labels = {
        **owner_labels(),
        LABEL_OWNER_PID: str(parent),
        LABEL_OWNER_STARTED: process_start_ticks(parent) or "",
    }
    assert not owner_is_dead(other_labels)
    other = _idle(docker_client, other_labels)
    mine = _idle(docker_client, owner_labels())
    try:
        listed = docker_client.api.containers(all=True, filters={"label": LABEL_SANDBOX})
        counted = {c["Id"] for c in owned_by(listed, owner_labels())}
        assert {other.id, mine.id} <= {c["Id"] for c in listed}
        assert mine.id in counted
        assert other.id not in counted
    finally:
        for container in (other, mine):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
