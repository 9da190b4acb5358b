"""The Docker backend's parts on their own: blueprints, the containers in flight, the watchdog."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from orchestrator.backends.docker.blueprints import Blueprints
from orchestrator.backends.docker.egress import EgressSetup
from orchestrator.backends.docker.live import LiveContainers
from orchestrator.backends.docker.sandbox import Sandbox
from orchestrator.backends.docker.watchdog import Watchdog
from orchestrator.backends.mountstage import MountStage
from orchestrator.errors import BackendUnavailableError, ImageNotFoundError
from orchestrator.policy import load_policy
from orchestrator.run import RunSpec
from orchestrator.settings import Settings
from orchestrator.testing import FakeEngine


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    ours, theirs = socket.socketpair()
    yield FakeEngine(ours)
    ours.close()
    theirs.close()


@pytest.fixture
def blueprints() -> Iterator[Blueprints]:
    stage = MountStage()
    yield Blueprints(Settings(), EgressSetup(), stage)
    stage.close()


class CountingEngine(FakeEngine):
    """Counts the image checks and runtime questions the engine gets."""

    asked = 0

    def image_labels(self, image: str) -> dict[str, str]:
        self.asked += 1
        return super().image_labels(image)

    def runtimes(self) -> frozenset[str]:
        self.asked += 1
        return super().runtimes()


def test_a_blueprint_is_built_once_per_language_policy_and_mounts(
    blueprints: Blueprints,
) -> None:
    """The second run of the same (language, policy) asks the engine nothing and shares the
    blueprint, which its pool key finds again."""
    ours, theirs = socket.socketpair()
    engine = CountingEngine(ours)
    try:
        first = blueprints.build(engine, "python", load_policy("strict"), RunSpec(5.0))
        asked = engine.asked
        assert blueprints.build(engine, "python", load_policy("strict"), RunSpec(5.0)) is first
        assert engine.asked == asked == 2
        assert blueprints.get(first.key) is first
        assert first.body["Image"] == "athena-sandbox/python:latest"
    finally:
        ours.close()
        theirs.close()


def test_an_image_of_another_protocol_is_refused(
    blueprints: Blueprints, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image whose runner speaks another protocol fails with how to rebuild it."""
    monkeypatch.setattr(engine, "image_labels", lambda image: {"org.athena.protocol": "0"})
    with pytest.raises(ImageNotFoundError, match="make images"):
        blueprints.build(engine, "python", load_policy("strict"), RunSpec(5.0))


def test_a_policy_requiring_gvisor_without_runsc_says_how_to_get_it(
    blueprints: Blueprints, engine: FakeEngine
) -> None:
    """gvisor: require on an engine with runc only is unavailable, naming `make gvisor`."""
    policy = load_policy({"runtime": {"gvisor": "require"}})
    with pytest.raises(BackendUnavailableError, match="make gvisor"):
        blueprints.build(engine, "python", policy, RunSpec(5.0))


def sandbox_on(engine: FakeEngine, container_id: str) -> Sandbox:
    sock, attached = engine.attach(container_id)
    return Sandbox(container_id, sock, attached, "img", "cold")


def test_a_container_let_go_before_its_report_is_removed(engine: FakeEngine) -> None:
    """Unfinished: removed (in the background); finished: left to AutoRemove."""
    live = LiveContainers()
    assert live.add("a") and live.add("b")
    live.release(engine, "a", finished=False)
    live.release(engine, "b", finished=True)
    live.close(engine)  # waits for the background removals
    assert engine.removed == ["a"]


def test_closing_cuts_every_run_short_and_refuses_new_containers(engine: FakeEngine) -> None:
    """close() closes each live sandbox's stream, removes its container, and add() says no."""
    live = LiveContainers()
    sandbox = sandbox_on(engine, "a")
    live.add("a", sandbox)
    live.close(engine)
    assert engine.removed == ["a"]
    assert sandbox.sock.fileno() == -1
    assert live.closed and not live.add("b")


def test_a_closed_watchdog_never_starts() -> None:
    """After close(), arming starts nothing (and does not even ask for the labels)."""
    watchdog = Watchdog()
    watchdog.close()

    def labels() -> dict[str, str]:
        raise AssertionError("asked for labels")

    watchdog.arm(labels)
    assert watchdog.pid is None
