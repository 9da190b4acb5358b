"""Custom images without Docker: which image a run uses, the label check, its errors, blueprints."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from orchestrator.backends.docker.blueprints import Blueprints
from orchestrator.backends.docker.egress import EgressSetup
from orchestrator.backends.mountstage import MountStage
from orchestrator.backends.protocol import PROTOCOL
from orchestrator.custom_images import (
    IMAGE_LANGUAGE_LABEL,
    CallImageRefusedError,
    ImageChoice,
    ImageRefusedError,
    PolicyImageRefusedError,
    build_custom,
    choose_image,
    label_problem,
    labels_digest,
    refused,
    served_language,
)
from orchestrator.errors import (
    ImageBuildError,
    ImageNotFoundError,
    PolicyError,
    RequestError,
    RunError,
)
from orchestrator.policy import load_policy
from orchestrator.run import RunSpec
from orchestrator.settings import Settings
from orchestrator.testing import FakeEngine

BASE = "athena-sandbox/python:latest"
OURS = {"org.athena.protocol": PROTOCOL, IMAGE_LANGUAGE_LABEL: "python"}


# ----------------------------------------------------------------------------- choosing


def test_the_call_image_wins_over_the_policy_image() -> None:
    """image= of the call beats the policy's image: and both beat the language's own."""
    assert choose_image("mine:1", "theirs:1", BASE) == ImageChoice("mine:1", "call")
    assert choose_image(None, "theirs:1", BASE) == ImageChoice("theirs:1", "policy")
    assert choose_image(None, None, BASE) == ImageChoice(BASE, "language")


def test_naming_the_language_image_is_the_default() -> None:
    """A call naming the language's own image gets it (not the policy's), checked as ours."""
    choice = choose_image(BASE, "theirs:1", BASE)
    assert choice == ImageChoice(BASE, "language") and not choice.custom


# ----------------------------------------------------------------------------- the label check


def test_an_image_with_our_labels_passes() -> None:
    """Our protocol and the run's language: nothing to say."""
    assert label_problem("mine:1", OURS, "python", BASE) is None


def test_an_image_without_our_labels_was_not_built_from_ours() -> None:
    """No labels: the message names the image, the base to start FROM and build-image."""
    problem = label_problem("mine:1", {}, "python", BASE)
    assert problem is not None
    assert "'mine:1'" in problem and f"not built FROM {BASE}" in problem
    assert "athena-sandbox build-image mine:1 DIR" in problem


def test_an_image_of_another_protocol_says_to_rebuild() -> None:
    """An older runner protocol: rebuild the images, then the custom image."""
    labels = {**OURS, "org.athena.protocol": "ATHENA/0"}
    problem = label_problem("mine:1", labels, "python", BASE)
    assert problem is not None
    assert "'ATHENA/0'" in problem and repr(PROTOCOL) in problem
    assert "athena-sandbox images" in problem


def test_an_image_of_another_language_names_both() -> None:
    """A javascript image for a python run: the message names both languages."""
    labels = {**OURS, IMAGE_LANGUAGE_LABEL: "javascript"}
    problem = label_problem("mine:1", labels, "python", BASE)
    assert problem is not None
    assert "serves javascript, not python" in problem


def test_a_refusal_is_typed_after_who_chose_the_image() -> None:
    """A call's image is a RequestError, a policy's a PolicyError; both ImageRefusedError."""
    by_call = refused(ImageChoice("mine:1", "call"), "python", "why")
    by_policy = refused(ImageChoice("mine:1", "policy"), "python", "why")
    assert isinstance(by_call, CallImageRefusedError) and isinstance(by_call, RequestError)
    assert isinstance(by_policy, PolicyImageRefusedError) and isinstance(by_policy, PolicyError)
    for error in (by_call, by_policy):
        assert isinstance(error, ImageRefusedError) and isinstance(error, ValueError)
        assert not isinstance(error, RunError)
        assert (error.image, error.language) == ("mine:1", "python")
    assert str(by_call).startswith("the call's image is refused: ")
    assert str(by_policy).startswith("the policy's image is refused: ")


def test_labels_digest_changes_with_any_label() -> None:
    """Two builds with other labels have other digests; the order of labels does not count."""
    assert labels_digest({"a": "1", "b": "2"}) == labels_digest({"b": "2", "a": "1"})
    assert labels_digest(OURS) != labels_digest({**OURS, "x": "1"})


# ----------------------------------------------------------------------------- build-image


def test_a_built_image_serves_the_language_of_its_label() -> None:
    """The language label of one of our images is what build-image reports."""
    labels = {**OURS, IMAGE_LANGUAGE_LABEL: "ruby"}
    assert served_language("mine:1", labels, "athena-sandbox") == "ruby"


@pytest.mark.parametrize(
    "labels",
    [{}, {"org.athena.protocol": PROTOCOL}, {**OURS, IMAGE_LANGUAGE_LABEL: "cobol"}],
    ids=["none", "no-language", "unknown-language"],
)
def test_a_built_image_not_from_ours_is_refused(labels: dict[str, str]) -> None:
    """Missing labels or a language we do not run: not FROM one of our images."""
    with pytest.raises(ImageBuildError, match="not built FROM one of our images"):
        served_language("mine:1", labels, "athena-sandbox")


def test_a_built_image_of_another_protocol_is_refused() -> None:
    """FROM an image of an older runner protocol: refused, saying to rebuild the images."""
    labels = {**OURS, "org.athena.protocol": "ATHENA/0"}
    with pytest.raises(ImageBuildError, match="athena-sandbox images"):
        served_language("mine:1", labels, "athena-sandbox")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Mine", "not an image name"),
        ("mine@sha256:00", "not an image name"),
        ("athena-sandbox/python:latest", "holds our own images"),
    ],
)
def test_build_image_refuses_bad_names_before_building(
    tmp_path: Path, name: str, message: str
) -> None:
    """Names that are not references, or under our prefix, fail before the engine is asked."""
    (tmp_path / "Dockerfile").write_text("FROM athena-sandbox/python:latest\n")
    with pytest.raises(ImageBuildError, match=message):
        build_custom(name, tmp_path, progress=lambda _line: None)


def test_build_image_needs_a_dockerfile(tmp_path: Path) -> None:
    """A directory without a Dockerfile is refused with its path."""
    with pytest.raises(ImageBuildError, match="holds no Dockerfile"):
        build_custom("mine:1", tmp_path, progress=lambda _line: None)


# ----------------------------------------------------------------------------- blueprints


class LabelledEngine(FakeEngine):
    """A fake engine whose images have the labels a test gives (missing: not found)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.images: dict[str, dict[str, str]] = {BASE: dict(OURS)}
        self.inspected: list[str] = []

    def image_labels(self, image: str) -> dict[str, str]:
        self.inspected.append(image)
        if image not in self.images:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        return dict(self.images[image])


@pytest.fixture
def engine() -> Iterator[LabelledEngine]:
    ours, theirs = socket.socketpair()
    yield LabelledEngine(ours)
    ours.close()
    theirs.close()


@pytest.fixture
def blueprints() -> Iterator[Blueprints]:
    stage = MountStage()
    yield Blueprints(Settings(), EgressSetup(), stage)
    stage.close()


def test_a_custom_image_has_its_own_blueprint_and_pool(
    blueprints: Blueprints, engine: LabelledEngine
) -> None:
    """Containers of a custom image are created from it, in a pool apart from the language's."""
    engine.images["mine:1"] = {**OURS, "extra": "1"}
    strict = load_policy("strict")
    default = blueprints.build(engine, "python", strict, RunSpec(5.0))
    custom = blueprints.build(engine, "python", strict, RunSpec(5.0), "mine:1")
    assert default.body["Image"] == BASE
    assert (custom.image, custom.body["Image"]) == ("mine:1", "mine:1")
    assert custom.key != default.key and blueprints.get(custom.key) is custom


def test_a_policy_image_is_used_when_the_call_names_none(
    blueprints: Blueprints, engine: LabelledEngine
) -> None:
    """image: in a policy selects the image; the call's image= overrides it."""
    engine.images["theirs:1"] = dict(OURS)
    engine.images["mine:1"] = dict(OURS)
    policy = load_policy({"extends": "strict", "image": "theirs:1"})
    assert blueprints.build(engine, "python", policy, RunSpec(5.0)).image == "theirs:1"
    assert blueprints.build(engine, "python", policy, RunSpec(5.0), "mine:1").image == "mine:1"


def test_a_custom_image_is_inspected_at_each_build_and_rechecked_when_rebuilt(
    blueprints: Blueprints, engine: LabelledEngine
) -> None:
    """Same labels: the same blueprint; a rebuild with other labels: a new pool key, checked
    again, and refused if its labels no longer fit."""
    engine.images["mine:1"] = {**OURS, "org.athena.custom-definition": "a"}
    strict = load_policy("strict")
    first = blueprints.build(engine, "python", strict, RunSpec(5.0), "mine:1")
    assert blueprints.build(engine, "python", strict, RunSpec(5.0), "mine:1") is first
    assert engine.inspected.count("mine:1") == 2
    engine.images["mine:1"] = {**OURS, "org.athena.custom-definition": "b"}
    rebuilt = blueprints.build(engine, "python", strict, RunSpec(5.0), "mine:1")
    assert rebuilt.key != first.key and rebuilt.image == "mine:1"
    engine.images["mine:1"] = {"org.athena.custom-definition": "c"}
    with pytest.raises(CallImageRefusedError, match="not built FROM"):
        blueprints.build(engine, "python", strict, RunSpec(5.0), "mine:1")


def test_a_missing_custom_image_says_how_to_build_it(
    blueprints: Blueprints, engine: LabelledEngine
) -> None:
    """ImageNotFoundError (a RunError) naming the image and `athena-sandbox build-image`."""
    with pytest.raises(ImageNotFoundError) as caught:
        blueprints.build(engine, "python", load_policy("strict"), RunSpec(5.0), "gone:1")
    assert "'gone:1'" in str(caught.value)
    assert "athena-sandbox build-image gone:1 DIR" in str(caught.value)


def test_a_policy_image_of_another_language_is_a_policy_error(
    blueprints: Blueprints, engine: LabelledEngine
) -> None:
    """A javascript image chosen by the policy for a python run: PolicyImageRefusedError."""
    engine.images["js:1"] = {**OURS, IMAGE_LANGUAGE_LABEL: "javascript"}
    policy = load_policy({"extends": "strict", "image": "js:1"})
    with pytest.raises(PolicyImageRefusedError, match="serves javascript, not python"):
        blueprints.build(engine, "python", policy, RunSpec(5.0))


def test_the_language_image_of_another_language_is_out_of_date(
    blueprints: Blueprints, engine: LabelledEngine
) -> None:
    """Our own python image labelled for another language: rebuild the images."""
    engine.images[BASE] = {**OURS, IMAGE_LANGUAGE_LABEL: "ruby"}
    with pytest.raises(ImageNotFoundError, match="make images"):
        blueprints.build(engine, "python", load_policy("strict"), RunSpec(5.0))
