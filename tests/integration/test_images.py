"""The sandbox images: built without a registry, non-root, not rebuilt when unchanged."""

from __future__ import annotations

import docker
import pytest

from orchestrator.backends.protocol import PROTOCOL
from orchestrator.images import DEFINITION_LABEL, ImageBuilder
from orchestrator.languages import LANGUAGES

NAMES = [lang.name for lang in LANGUAGES]

pytestmark = pytest.mark.docker


def test_unchanged_definitions_are_not_rebuilt(docker_client: docker.DockerClient) -> None:
    """A second build with nothing changed builds nothing and says each image is up to date."""
    lines: list[str] = []
    built = ImageBuilder(progress=lines.append, client=docker_client).build_all()
    assert set(built) == set(NAMES)
    assert not [line for line in lines if "building" in line], lines
    assert sum("is up to date" in line for line in lines) == 1 + len(NAMES)  # runner + languages


@pytest.mark.parametrize("language", NAMES)
def test_images_run_as_non_root_and_speak_the_protocol(
    docker_client: docker.DockerClient, language: str
) -> None:
    """Each language image runs as uid 65534 and is labelled with the runner protocol and its hash."""
    image = docker_client.images.get(f"athena-sandbox/{language}:latest")
    assert image.attrs["Config"]["User"] == "65534:65534"
    labels = image.labels
    assert labels["org.athena.protocol"] == PROTOCOL
    assert labels["org.athena.language"] == language
    assert any(tag.endswith(":" + labels[DEFINITION_LABEL]) for tag in image.tags)
