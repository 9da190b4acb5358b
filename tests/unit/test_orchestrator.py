"""Unit tests of the Orchestrator and MemoryAPI driven by FakeBackend (no Docker)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from athena.api import MemoryAPI
from orchestrator.errors import (
    BackendUnavailableError,
    CodeNotAcceptedError,
    PolicyError,
    PolicyNotFoundError,
    RequestError,
    RunError,
    SandboxFailedError,
    UnknownLanguageError,
)
from orchestrator.models import Event, ExecutionRequest, ExecutionResult
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import Policy, ResolvedMount, load_policy
from orchestrator.settings import Settings
from orchestrator.testing import FakeBackend, FakeRun
from tests.contract import RESULT_KEYS


@dataclass
class ListRecorder:
    """A recorder keeping what it is given."""

    records: list[tuple[ExecutionRequest, ExecutionResult]] = field(default_factory=list)
    events: list[list[Event]] = field(default_factory=list)

    def record_execution(
        self, request: ExecutionRequest, result: ExecutionResult, events: Sequence[Event] = ()
    ) -> int:
        self.records.append((request, result))
        self.events.append(list(events))
        return len(self.records)


class BrokenRecorder:
    """A recorder whose store is down."""

    def record_execution(
        self, request: ExecutionRequest, result: ExecutionResult, events: Sequence[Event] = ()
    ) -> int:
        raise OSError("disk full")


def orchestrator(
    backend: FakeBackend, recorder: Any = None, project_dir: Path | None = None
) -> Orchestrator:
    return Orchestrator(
        settings=Settings(project_dir=project_dir), backends=[backend], recorder=recorder
    )


def request(
    code: str = "print(2 + 2)", language: str = "python", policy: Any = None, **kwargs: Any
) -> ExecutionRequest:
    return ExecutionRequest.create(code, language, policy=load_policy(policy), **kwargs)


# --------------------------------------------------------------------------- runs


def test_a_run_returns_the_backends_result_and_records_it() -> None:
    """A clean run returns the fake's output as a successful result, recorded once."""
    backend = FakeBackend(FakeRun(stdout="4\n", output={"n": 4}))
    recorder = ListRecorder()
    req = request(timeout_seconds=5)
    result = orchestrator(backend, recorder).run(req)
    assert (result.success, result.stdout, result.exit_code, result.output) == (
        True,
        "4\n",
        0,
        {"n": 4},
    )
    assert (result.sandbox_mode, result.timeout_seconds, result.policy) == ("docker", 5.0, "strict")
    assert backend.requests == [req]
    assert backend.specs[0].timeout_seconds == 5.0
    assert recorder.records == [(req, result)]


def test_rejected_code_never_reaches_the_backend() -> None:
    """strict + 'import subprocess' fails validation with issues by line; no backend call."""
    backend, recorder = FakeBackend(), ListRecorder()
    result = orchestrator(backend, recorder).run(request("import os\nimport subprocess\n"))
    assert result.success is False
    assert result.error == "Code validation failed"
    assert result.exit_code == -1
    assert [(i.line, i.severity, i.rule) for i in result.issues] == [
        (2, "error", "forbidden_import")
    ]
    assert backend.requests == []
    assert [r for _, r in recorder.records] == [result]


def test_unenforced_validation_runs_and_reports_issues() -> None:
    """With validation.enforce false the code runs and the findings are still reported."""
    backend = FakeBackend()
    policy = {"extends": "strict", "validation": {"enforce": False}}
    result = orchestrator(backend).run(request("import subprocess\n", policy=policy))
    assert result.success is True
    assert len(backend.requests) == 1
    assert [(i.line, i.rule) for i in result.issues] == [(1, "forbidden_import")]


def test_nul_in_python_code_is_not_accepted() -> None:
    """NUL in Python source raises CodeNotAcceptedError with the recorded result; no run happens."""
    backend, recorder = FakeBackend(), ListRecorder()
    with pytest.raises(CodeNotAcceptedError, match="NUL") as info:
        orchestrator(backend, recorder).run(request("print('a\x00b')"))
    result = info.value.result
    assert result is not None
    assert (result.success, result.error_type, result.exit_code) == (
        False,
        "CodeNotAcceptedError",
        -1,
    )
    assert backend.requests == []
    assert [r for _, r in recorder.records] == [result]


def test_execute_turns_code_not_accepted_into_a_result() -> None:
    """execute() returns success False with error_type CodeNotAcceptedError instead of raising."""
    backend = FakeBackend()
    result = orchestrator(backend).execute(request("x = 1\x00"))
    assert (result.success, result.error_type) == (False, "CodeNotAcceptedError")
    assert "NUL" in (result.error or "")
    assert backend.requests == []


def test_nul_in_javascript_code_is_accepted() -> None:
    """JavaScript source may hold NUL: it reaches the backend unchanged."""
    backend = FakeBackend()
    code = "console.log('a\x00b')"
    result = orchestrator(backend).execute(request(code, "javascript"))
    assert result.success is True
    assert [r.code for r in backend.requests] == [code]


def test_an_unavailable_backend_raises_with_the_recorded_result() -> None:
    """A backend raising BackendUnavailableError: run() re-raises it with .result, recorded."""
    backend = FakeBackend(FakeRun(error=BackendUnavailableError("no engine answers")))
    recorder = ListRecorder()
    with pytest.raises(BackendUnavailableError) as info:
        orchestrator(backend, recorder).run(request())
    result = info.value.result
    assert result is not None
    assert (result.success, result.error, result.error_type) == (
        False,
        "no engine answers",
        "BackendUnavailableError",
    )
    assert [r for _, r in recorder.records] == [result]


def test_execute_returns_the_unavailable_backends_result() -> None:
    """execute() returns the failed result of an unavailable backend instead of raising."""
    backend = FakeBackend(FakeRun(error=BackendUnavailableError("down")))
    recorder = ListRecorder()
    result = orchestrator(backend, recorder).execute(request())
    assert (result.success, result.error_type, result.error) == (
        False,
        "BackendUnavailableError",
        "down",
    )
    assert [r for _, r in recorder.records] == [result]


def test_a_policy_refusing_every_backend_is_unavailable() -> None:
    """A fallback without docker raises BackendUnavailableError naming the modes."""
    backend, recorder = FakeBackend(), ListRecorder()
    policy = {"extends": "strict", "fallback": ["srt"]}
    with pytest.raises(BackendUnavailableError) as info:
        orchestrator(backend, recorder).run(request(policy=policy))
    message = str(info.value)
    assert "srt" in message
    assert "docker" in message
    assert backend.requests == []
    assert info.value.result is not None
    assert len(recorder.records) == 1


def test_the_strongest_accepted_backend_runs_the_code() -> None:
    """Of several backends, the strongest one the policy's fallback accepts is chosen."""
    srt, docker = FakeBackend(name="srt"), FakeBackend(name="docker")
    orch = Orchestrator(settings=Settings(), backends=[srt, docker])
    orch.run(request(policy={"extends": "strict", "fallback": ["srt", "docker"]}))
    assert (len(docker.requests), len(srt.requests)) == (1, 0)
    orch.run(request(policy={"extends": "strict", "fallback": ["srt"]}))
    assert (len(docker.requests), len(srt.requests)) == (1, 1)


def test_mounts_are_resolved_against_the_project_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """research's ${project_dir} reaches the backend as the settings' project directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    project = tmp_path / "proj"
    project.mkdir()
    backend = FakeBackend()
    orchestrator(backend, project_dir=project).run(request(policy="research"))
    info = project.stat()
    assert backend.specs[0].mounts == (
        ResolvedMount(str(project.resolve()), "/project", True, info.st_dev, info.st_ino),
    )


def test_an_unusable_project_dir_is_a_policy_error_and_nothing_is_recorded() -> None:
    """A project directory of / raises PolicyError from execute(); nothing runs or is recorded."""
    backend, recorder = FakeBackend(), ListRecorder()
    with pytest.raises(PolicyError, match="root of the host"):
        orchestrator(backend, recorder, project_dir=Path("/")).execute(request(policy="research"))
    assert backend.requests == []
    assert recorder.records == []


# --------------------------------------------------------------------------- recording


def test_the_recorder_is_called_once_per_run() -> None:
    """Every run is recorded exactly once, with its own request and result."""
    recorder = ListRecorder()
    orch = orchestrator(FakeBackend(), recorder)
    first, second = request(), request("print(1)")
    results = [orch.run(first), orch.run(second)]
    assert recorder.records == [(first, results[0]), (second, results[1])]


def test_record_false_is_not_recorded() -> None:
    """A request with record=False is run but not recorded, even when it fails."""
    recorder = ListRecorder()
    orch = orchestrator(FakeBackend(), recorder)
    assert orch.run(request(record=False)).success is True
    assert orch.run(request("import subprocess", record=False)).success is False
    assert recorder.records == []


def test_a_failing_recorder_does_not_lose_the_result() -> None:
    """A recorder that raises is logged as an error and the caller still gets the result."""
    req = request()
    with capture_logs() as logs:
        result = orchestrator(FakeBackend(FakeRun(stdout="ok")), BrokenRecorder()).run(req)
    assert (result.success, result.stdout) == (True, "ok")
    assert logs == [
        {
            "event": "could not record the execution",
            "log_level": "error",
            "execution_id": req.execution_id,
            "error": "OSError: disk full",
        }
    ]


def test_the_recorder_gets_every_event_of_the_run_exit_last() -> None:
    """The recorder receives the events on_event saw, in order, the exit event with the result."""
    recorder = ListRecorder()
    seen: list[Event] = []
    backend = FakeBackend(FakeRun(stdout="out", stderr="err", signal=11))
    result = orchestrator(backend, recorder).run(request(), on_event=seen.append)
    (events,) = recorder.events
    assert [(e.kind, e.text) for e in events] == [(e.kind, e.text) for e in seen]
    assert [e.kind for e in events] == ["stdout", "stderr", "violation", "exit"]
    assert events[-1].result == result


def test_recorded_events_keep_the_head_and_tail_of_a_flood() -> None:
    """Output past max_output_bytes is cut from the stored events as from the result, marked."""
    recorder = ListRecorder()
    policy = {"extends": "strict", "limits": {"max_output_bytes": 2048}}
    flood = "".join(f"{i:05d}\n" for i in range(3000))  # 18,000 bytes

    def script(_: ExecutionRequest) -> FakeRun:
        return FakeRun()

    class Chunky(FakeBackend):
        def run(self, req: Any, spec: Any, context: Any) -> Any:
            for start in range(0, len(flood), 600):
                context.feed("stdout", flood[start : start + 600].encode())
            return super().run(req, spec, context)

    result = orchestrator(Chunky(script), recorder).run(request(policy=policy))
    (events,) = recorder.events
    text = "".join(e.text for e in events if e.kind == "stdout")
    assert text.startswith(flood[:1024]) and text.endswith(flood[-600:])
    assert "[... athena-sandbox cut " in text and len(text.encode()) < 2048 + 100
    assert len(text) <= len(result.stdout) + 600
    assert events[-1].kind == "exit"


def test_record_false_collects_no_events() -> None:
    """A run that is not recorded gives the recorder nothing (no events are kept for it)."""
    recorder = ListRecorder()
    orchestrator(FakeBackend(FakeRun(stdout="x")), recorder).run(request(record=False))
    assert recorder.events == []


# --------------------------------------------------------------------------- events


def test_on_event_gets_output_then_a_final_exit_event() -> None:
    """on_event receives the output chunks as they come and an exit event last."""
    events: list[Event] = []
    backend = FakeBackend(FakeRun(stdout="out", stderr="err", exit_code=3))
    orchestrator(backend).run(request(), on_event=events.append)
    assert [(e.kind, e.text) for e in events] == [
        ("stdout", "out"),
        ("stderr", "err"),
        ("exit", ""),
    ]
    assert events[-1].exit_code == 3


def test_runs_that_never_start_still_end_with_an_exit_event() -> None:
    """Rejected and failed runs end with an exit event (-1), so a stream consumer knows."""
    from orchestrator.errors import BackendUnavailableError

    rejected: list[Event] = []
    orchestrator(FakeBackend()).execute(request("import subprocess"), on_event=rejected.append)
    failed: list[Event] = []
    broken = FakeBackend(FakeRun(error=BackendUnavailableError("no engine")))
    orchestrator(broken).execute(request(), on_event=failed.append)
    for events in (rejected, failed):
        assert [e.kind for e in events] == ["exit"] and events[0].exit_code == -1


def test_on_event_gets_violations_before_the_exit() -> None:
    """A run killed by a signal gives a violation event and then an exit event with 128+N."""
    events: list[Event] = []
    orchestrator(FakeBackend(FakeRun(signal=11))).run(request(), on_event=events.append)
    assert [e.kind for e in events] == ["violation", "exit"]
    assert events[0].violation is not None
    assert events[0].violation.category == "signal"
    assert events[1].exit_code == 139


# --------------------------------------------------------------------------- lifecycle


def test_close_closes_the_backends_and_refuses_later_runs() -> None:
    """close() closes every backend; a run afterwards raises SandboxFailedError."""
    backend = FakeBackend()
    orch = orchestrator(backend)
    orch.close()
    orch.close()  # idempotent
    assert backend.closed is True
    with pytest.raises(SandboxFailedError, match="closed"):
        orch.run(request())
    assert backend.requests == []


def test_the_orchestrator_is_a_context_manager() -> None:
    """Leaving a with-block closes the orchestrator and its backends."""
    backend = FakeBackend()
    with orchestrator(backend) as orch:
        orch.run(request())
    assert backend.closed is True


def test_run_errors_are_sandbox_failures_in_the_tree() -> None:
    """SandboxFailedError from a backend is a RunError and comes back from execute()."""
    backend = FakeBackend(FakeRun(error=SandboxFailedError("runner lost")))
    result = orchestrator(backend).execute(request())
    assert (result.error_type, result.error) == ("SandboxFailedError", "runner lost")
    assert issubclass(SandboxFailedError, RunError)


# --------------------------------------------------------------------------- MemoryAPI


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Callable[..., MemoryAPI]]:
    """Build MemoryAPIs on tmp_path/m.db with a fake backend; close them afterwards."""
    made: list[MemoryAPI] = []

    def make(backend: FakeBackend | None = None, settings: Settings | None = None) -> MemoryAPI:
        api = MemoryAPI.create(
            tmp_path / "m.db",
            settings=settings,
            backends=[backend or FakeBackend(FakeRun(stdout="4\n"))],
        )
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


def test_memory_api_returns_a_plain_dict_and_records_the_run(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """execute_code returns a JSON-ready dict with every key; the run and its event are stored."""
    api = make_api()
    result = api.execute_code("print(2 + 2)")
    assert type(result) is dict
    assert set(result) == RESULT_KEYS
    assert (result["success"], result["stdout"], result["language"]) == (True, "4\n", "python")
    json.dumps(result)
    executions = api.store.list_executions()
    assert [e.execution_id for e in executions] == [result["execution_id"]]
    assert executions[0].code == "print(2 + 2)"
    events = api.store.list_events()
    assert [(e.event_type, e.context["execution_id"]) for e in events] == [
        ("execution", result["execution_id"])
    ]


def test_memory_api_turns_run_errors_into_failed_dicts(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """A run the backend could not do gives success False with error_type, and is recorded."""
    api = make_api(FakeBackend(FakeRun(error=BackendUnavailableError("down"))))
    result = api.execute_code("print(1)")
    assert (result["success"], result["error_type"], result["error"]) == (
        False,
        "BackendUnavailableError",
        "down",
    )
    assert [e.execution_id for e in api.store.list_executions()] == [result["execution_id"]]


def test_memory_api_record_false_stores_nothing(make_api: Callable[..., MemoryAPI]) -> None:
    """execute_code(record=False) runs the code but stores nothing."""
    api = make_api()
    assert api.execute_code("print(1)", record=False)["success"] is True
    assert api.store.list_executions() == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"language": "cobol"}, UnknownLanguageError),
        ({"sandbox_policy": "nosuch"}, PolicyNotFoundError),
        ({"sandbox_policy": {"limits": {"memory": 5}}}, PolicyError),
        ({"timeout_seconds": 0}, RequestError),
        ({"parameters": {"s": {1, 2}}}, RequestError),
        ({"code": "x = 1  # eleven+"}, RequestError),
    ],
)
def test_memory_api_raises_caller_mistakes_and_records_nothing(
    kwargs: dict[str, Any], error: type[Exception], make_api: Callable[..., MemoryAPI]
) -> None:
    """Bad arguments raise to the caller; nothing runs and nothing is recorded."""
    backend = FakeBackend()
    api = make_api(backend, Settings(max_code_bytes=10))
    arguments = {"code": "print(1)", **kwargs}
    with pytest.raises(error):
        api.execute_code(**arguments)
    assert backend.requests == []
    assert api.store.list_executions() == []
    assert api.store.list_events() == []


def test_memory_api_accepts_every_policy_form(
    make_api: Callable[..., MemoryAPI], tmp_path: Path
) -> None:
    """sandbox_policy may be a shipped name, a path, a dict or a Policy."""
    backend = FakeBackend()
    api = make_api(backend)
    path = tmp_path / "mine.yaml"
    path.write_text("extends: strict\nlimits: {pids: 99}\n", encoding="utf-8")
    for spec in ("strict", str(path), {"extends": "strict"}, Policy(name="given")):
        assert api.execute_code("print(1)", sandbox_policy=spec)["success"] is True
    assert [r.policy.name for r in backend.requests] == ["strict", "mine", "custom", "given"]


# --------------------------------------------------------------------------- the ladder


def ladder(
    *, down: set[str] = frozenset(), modes: tuple[str, ...] | None = None
) -> tuple[Orchestrator, dict[str, FakeBackend]]:
    """An orchestrator over four fake backends, those in ``down`` unavailable."""
    backends = {
        name: FakeBackend(name=name, unavailable=f"{name} is down" if name in down else None)
        for name in ("inprocess", "restricted", "srt", "docker")
    }
    settings = Settings(sandbox_backends=modes)  # type: ignore[arg-type]
    return Orchestrator(settings=settings, backends=list(backends.values())), backends


def test_the_strongest_available_mode_the_policy_accepts_runs() -> None:
    """docker first; when it is down srt; then restricted; never a mode the policy refuses."""
    orch, _ = ladder(down={"docker"})
    assert orch.execute(request()).sandbox_mode == "srt"
    orch, _ = ladder(down={"docker", "srt"})
    assert orch.execute(request()).sandbox_mode == "restricted"
    orch, _ = ladder(down={"docker", "srt", "restricted"})
    result = orch.execute(request())  # strict does not accept inprocess
    assert result.error_type == "BackendUnavailableError"
    assert "docker is down" in (result.error or "") and "srt is down" in (result.error or "")


def test_settings_can_only_remove_modes() -> None:
    """ATHENA_SANDBOX_BACKENDS removes modes; it never adds one the policy refuses."""
    orch, _ = ladder(modes=("srt", "restricted"))
    assert orch.execute(request()).sandbox_mode == "srt"
    orch, _ = ladder(modes=("inprocess",))
    result = orch.execute(request())  # strict refuses inprocess whatever the settings say
    assert result.error_type == "BackendUnavailableError"
    assert "removed by ATHENA_SANDBOX_BACKENDS" in (result.error or "")


def test_inprocess_needs_the_policy_and_the_opt_in() -> None:
    """development accepts inprocess, but only a process that named it gets it."""
    dev = request(policy="development")
    orch, _ = ladder(down={"docker", "srt", "restricted"})
    result = orch.execute(dev)
    assert result.error_type == "BackendUnavailableError" and "opt in" in (result.error or "")
    orch, _ = ladder(down={"docker", "srt", "restricted"}, modes=("docker", "inprocess"))
    assert orch.execute(dev).sandbox_mode == "inprocess"


def test_modes_lists_every_mode_with_its_reason() -> None:
    """modes() says, strongest first, which modes can run a language and why not."""
    orch, _ = ladder(down={"docker"})
    assert orch.modes("python") == [
        ("docker", "docker is down"),
        ("srt", None),
        ("restricted", None),
        ("inprocess", "runs trusted code only: name it in ATHENA_SANDBOX_BACKENDS to opt in"),
    ]


# --------------------------------------------------------------------------- result listeners


def test_every_run_ends_with_one_call_of_each_result_listener() -> None:
    """Success, refusal by the validator, a failed run and a run that could not happen alike."""
    seen: list[ExecutionResult] = []
    orch = orchestrator(FakeBackend(FakeRun(stdout="4\n")), ListRecorder())
    orch.add_result_listener(seen.append)
    ok = orch.run(request())
    refused = orch.run(request("import subprocess\n"))
    failing = Orchestrator(
        settings=Settings(),
        backends=[FakeBackend(FakeRun(error=SandboxFailedError("the engine fell over")))],
    )
    failing.add_result_listener(seen.append)
    with pytest.raises(RunError) as raised:
        failing.run(request())
    assert seen == [ok, refused, raised.value.result]
    assert [r.success for r in seen] == [True, False, False]


def test_a_listener_that_raises_loses_no_result_and_a_removed_one_is_not_called() -> None:
    calls: list[str] = []

    def broken(_result: ExecutionResult) -> None:
        calls.append("broken")
        raise ValueError("observer bug")

    orch = orchestrator(FakeBackend(FakeRun(stdout="4\n")))
    remove = orch.add_result_listener(broken)
    orch.add_result_listener(lambda _result: calls.append("after"))
    with capture_logs() as logs:
        result = orch.run(request())
    assert result.success and result.stdout == "4\n"
    assert calls == ["broken", "after"]
    assert any(entry["event"] == "a result listener failed" for entry in logs)
    remove()
    orch.run(request())
    assert calls == ["broken", "after", "after"]


# --------------------------------------------------------------------------- custom images


def test_a_custom_image_never_falls_back_to_a_host_mode() -> None:
    """A run naming a custom image that only a host mode could take fails clearly, unrun."""
    backend = FakeBackend(name="srt")
    policy = {"name": "fallback", "extends": "strict", "fallback": ["docker", "srt"]}
    result = orchestrator(backend).execute(request(policy=policy, image="my-python:1"))
    assert (result.success, result.error_type) == (False, "BackendUnavailableError")
    assert "my-python:1" in (result.error or "") and "docker mode only" in (result.error or "")
    assert backend.requests == []
    plain = orchestrator(FakeBackend(name="srt")).execute(request(policy=policy))
    assert plain.success


def test_requirements_never_fall_back_to_a_host_mode() -> None:
    """A run with requirements that only a host mode could take fails clearly, unrun."""
    backend = FakeBackend(name="srt")
    policy = {"name": "fallback", "extends": "research", "fallback": ["docker", "srt"]}
    req = request(policy=policy).model_copy(update={"requirements": ("athena-probe==1.0",)})
    result = orchestrator(backend).execute(req)
    assert (result.success, result.error_type) == (False, "BackendUnavailableError")
    assert "requirements" in (result.error or "") and backend.requests == []


def test_on_dispatch_is_called_for_a_run_that_reaches_its_sandbox_only() -> None:
    """A run handed to its sandbox calls on_dispatch once; one refused before it never does."""
    calls: list[str] = []
    orch = orchestrator(FakeBackend(FakeRun(stdout="4\n")))
    ran = orch.execute(request(), on_dispatch=lambda: calls.append("ran"))
    assert ran.success and calls == ["ran"]
    refused = orch.execute(
        request("import subprocess\n"), on_dispatch=lambda: calls.append("refused")
    )
    assert not refused.success and calls == ["ran"]
