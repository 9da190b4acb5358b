"""The judge of one hostile case in one isolation mode.

:class:`Sec` runs the hostile code through ``MemoryAPI.execute_code`` (bound to one mode the way
``tests/integration/test_contract.py`` binds it), then decides by the state of the host: no
listener reached, no canary read back or changed, no new file in a system directory, no kernel
setting changed, no decoy process killed, nothing of the run left (processes, containers, work
directories), the engine answering and the mode still serving a plain run. Case-specific
findings are added with :meth:`Sec.expect`.

A hostile run counts only when it reached its attempt: its code marks where the attempt begins
with a ``@ATTEMPT@`` line, which prints a per-run marker (:mod:`tests.security.attempt`), and a
run whose output lacks it makes the case *not attempted* (the test fails), never contained.
Follow-up probes that attempt nothing pass ``attempt=False``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import secrets
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.fast.host import host_reason
from orchestrator.backends.srt import missing_for_srt
from orchestrator.languages import LANGUAGES as REGISTRY
from orchestrator.policy import shipped_policy_names
from orchestrator.settings import Settings
from tests.security import hostenv
from tests.security.attempt import Marker
from tests.security.judge import SYSTEM_DIRS, HostCheck, leftovers
from tests.security.listeners import Listeners
from tests.security.results import CONTAINED, MODES, NA, RESULTS, Cell, case_state

# What each mode runs, from the registry: a new language is in every case that has code for it.
LANGUAGES = {
    "docker-runc": tuple(lang.name for lang in REGISTRY),
    "docker-runsc": tuple(lang.name for lang in REGISTRY),
    "fast": tuple(lang.name for lang in REGISTRY),
    "srt": tuple(lang.name for lang in REGISTRY),
    "restricted": tuple(lang.name for lang in REGISTRY if lang.restricted),
}
GVISOR_POLICY = "strict-gvisor"
FAST_POLICY = "strict-fast"
# A sandbox that died under the code (not before it) still leaves a host to judge.
JUDGEABLE_ERRORS = frozenset({"SandboxFailedError"})
SCOPE = os.environ.get("ATHENA_SECURITY_SCOPE", "ci")
MODE_PARAMS = [
    pytest.param("docker-runc", marks=pytest.mark.docker),
    pytest.param("docker-runsc", marks=pytest.mark.docker),
    pytest.param("fast", marks=pytest.mark.docker),  # the engine exports the image's root
    pytest.param("srt", marks=pytest.mark.srt),
    pytest.param("restricted"),
]
assert SCOPE in ("ci", "full"), f"ATHENA_SECURITY_SCOPE must be ci or full, not {SCOPE!r}"
assert [p.values[0] for p in MODE_PARAMS] == list(MODES)


@functools.cache
def unavailable_reason(mode: str, client: docker.DockerClient) -> str | None:
    """Why ``mode`` cannot run on this machine (None: it can)."""
    if mode == "docker-runsc":
        if GVISOR_POLICY not in shipped_policy_names():
            return f"no `{GVISOR_POLICY}` policy is shipped yet"
        if "runsc" not in (client.info().get("Runtimes") or {}):
            return "the Docker engine has no `runsc` runtime (gVisor is not installed)"
    elif mode == "fast":
        shipped = FAST_POLICY in shipped_policy_names()
        return host_reason() if shipped else f"no `{FAST_POLICY}` policy is shipped yet"
    elif mode == "srt":
        missing = missing_for_srt(Settings())
        if missing:
            return "srt is not usable: " + "; ".join(missing)
    elif mode == "restricted" and importlib.util.find_spec("RestrictedPython") is None:
        return "RestrictedPython is not installed"
    return None  # docker-runc: the session's fixtures already fail the run without an engine


def _is_runsc(result: dict[str, Any]) -> bool:
    """Whether a docker run ran under gVisor (runsc, or its no-network variant runsc-nonet)."""
    return str((result["isolation"] or {}).get("runtime", "")).startswith("runsc")


def policy_for(mode: str, *, research: bool = False, **overrides: Any) -> dict[str, Any]:
    """The hostile-code policy of a mode: strict (or research), validation not enforced.

    The fast mode runs strict's rules as ``strict-fast``; it has no mounts and no network, so
    its research stand-in is strict-fast with research's workspace size only.
    """
    if mode == "fast":
        policy: dict[str, Any] = {"extends": FAST_POLICY}
        if research:
            policy["filesystem"] = {"tmpfs_mb": 256}
    elif mode == "docker-runsc":
        policy = {"extends": GVISOR_POLICY}
        if research:
            mount = {"source": "${project_dir}", "target": "/project", "read_only": True}
            policy["filesystem"] = {"tmpfs_mb": 256, "mounts": [mount]}
    else:
        policy = {"extends": "research" if research else "strict"}
    policy["validation"] = {"enforce": False}
    for key, value in overrides.items():
        policy[key] = {**policy.get(key, {}), **value}
    return policy


@dataclass
class HostEnv:
    """Session-wide host fixtures: the base directory, canaries, listeners and decoys."""

    base: Path
    client: docker.DockerClient
    listeners: Listeners
    decoys: hostenv.Decoys
    world_canary: Path  # world-readable, outside anything a sandbox is given
    root_canary: Path  # root-only (0600), JSON shaped like the bootstrap's output envelope
    secrets: dict[str, str] = field(default_factory=dict)

    def fill(self, code: str, token: str, project: Path) -> str:
        """Put the run's addresses, paths and token into a hostile snippet."""
        tcp = [list(t) for t in self.listeners.tcp]
        udp = [list(t) for t in self.listeners.udp]
        values = {
            "@TOKEN@": token,
            "@TCP@": json.dumps(tcp),
            "@UDP@": json.dumps(udp),
            "@TCP_BASH@": " ".join(f"{h}:{p}" for h, p in tcp),
            "@UDP_BASH@": " ".join(f"{h}:{p}" for h, p in udp),
            "@WORLD@": str(self.world_canary),
            "@ROOTJSON@": str(self.root_canary),
            "@BASE@": str(self.base),
            "@PROJECT@": str(project),
        }
        for key, value in values.items():
            code = code.replace(key, value)
        return code


class Sec:
    """One hostile case in one mode: run, then judge by the host."""

    def __init__(
        self, mode: str, case: str, description: str, host: HostEnv, workdir: Path, mp: Any
    ) -> None:
        self.mode, self.case, self.description = mode, case, description
        self.host, self.workdir, self._mp = host, workdir, mp
        self.token = f"athena-sec-{secrets.token_hex(6)}"
        self.project = workdir / "project"
        self.project.mkdir(mode=0o755)
        (self.project / "data.csv").write_text("a,b\n1,2\n")
        self.tmpdir = workdir / "t"  # tempfile's directory: srt and restricted work dirs
        self.tmpdir.mkdir(mode=0o711)
        self.results: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.errors: list[str] = []
        self.unattempted: list[str] = []  # runs whose output lacks their attempt marker
        self.notes: list[str] = []
        self.elapsed: list[float] = []
        self.finished = False
        self._api: MemoryAPI | None = None
        self._api_lock = threading.Lock()  # cases run several runs at once: one API for all
        self._project_before = hostenv.tree_state(self.project)
        env_secret = f"env-secret-{secrets.token_hex(8)}"
        mp.setenv("ATHENA_SEC_ENV_CANARY", env_secret)
        self.check = HostCheck(
            host.client,
            host.listeners,
            host.decoys,
            {**host.secrets, "the orchestrator's environment": env_secret},
            token=self.token,
            token_dirs=(*SYSTEM_DIRS, str(host.base)),
        )
        self.check.begin()

    # ------------------------------------------------------------------ running

    @property
    def api(self) -> MemoryAPI:
        """The MemoryAPI bound to this mode (created at first use, by one thread only)."""
        with self._api_lock:
            return self._api or self._create_api()

    def _create_api(self) -> MemoryAPI:
        self._mp.setattr(tempfile, "tempdir", str(self.tmpdir))
        if self.mode.startswith("docker"):
            settings = Settings(project_dir=self.project, pool_size=0)
        elif self.mode == "fast":  # the engine answers (the export); only this mode may run
            settings = Settings(project_dir=self.project, sandbox_backends=("fast",))
        else:  # the engine is unreachable, so the ladder itself falls back to this mode
            self._mp.setenv("DOCKER_HOST", f"unix://{self.workdir}/no-engine.sock")
            settings = Settings(project_dir=self.project, sandbox_backends=("docker", self.mode))
        self._api = MemoryAPI.create(self.workdir / "memory.db", settings=settings)
        return self._api

    def languages(self, *wanted: str) -> list[str]:
        """The languages of ``wanted`` this mode runs; none: the case is n.a. here (skips)."""
        usable = [lang for lang in wanted if lang in LANGUAGES[self.mode]]
        if not usable:
            self.not_applicable(f"{self.mode} does not run {', '.join(wanted)}")
        return usable

    def only(self, *modes: str) -> None:
        """The case applies to ``modes`` only: anywhere else it is n.a. (skips)."""
        if self.mode not in modes:
            self.not_applicable(f"the case does not apply to {self.mode}")

    def not_applicable(self, why: str) -> None:
        """Record n.a. and skip the test."""
        self.finished = True
        RESULTS.record(self.case, self.mode, Cell(NA, why), self.description)
        pytest.skip(why)

    def plant_in_project(self, name: str, target: str) -> None:
        """Put a symlink into the project directory on the host (part of its expected state)."""
        (self.project / name).symlink_to(target)
        self._project_before = hostenv.tree_state(self.project)

    def policy(self, *, research: bool = False, **overrides: Any) -> dict[str, Any]:
        """This mode's hostile-code policy."""
        return policy_for(self.mode, research=research, **overrides)

    def run(
        self,
        code: str,
        language: str = "python",
        *,
        research: bool = False,
        timeout_seconds: float = 15,
        policy: dict[str, Any] | None = None,
        values: dict[str, str] | None = None,
        attempt: bool = True,
        refused_by: str | None = None,
    ) -> dict[str, Any]:
        """Run hostile code in this mode and keep its result for the judgement.

        ``values`` fills extra placeholders of the code (``{"@VICTIM@": path}``). With
        ``attempt`` (hostile code) the code's ``@ATTEMPT@`` line prints a fresh marker, which
        the output must hold; ``attempt=False`` is for probes that attempt nothing.
        ``refused_by``: the text (in stderr) of the mode refusing the attempt itself before
        anything runs (RestrictedPython's compiler refusing the very dunder the attack uses);
        that refusal stands for the marker.

        Raises:
            ValueError: ``attempt`` and the code has no ``@ATTEMPT@`` line.
        """
        for key, value in (values or {}).items():
            code = code.replace(key, value)
        marker = Marker.fresh() if attempt else None
        if marker is not None:
            code = marker.place(code, language)
        filled = self.host.fill(code, self.token, self.project)
        result = self._execute(filled, language, timeout_seconds, policy, research)
        if (
            marker is not None
            and result["error_type"] == "SandboxFailedError"
            and marker.not_attempted(result) is not None
        ):
            # A sandbox that died before the code reached its attempt judged nothing (a rare
            # runc start-up kill, exit 137 with no output): run the attack once more, so the
            # case is judged on an attempt; a second such death fails it as not attempted.
            self.notes.append(f"{language}: the first sandbox died before the attempt; re-run")
            result = self._execute(filled, language, timeout_seconds, policy, research)
        self._check_mode(result)
        if marker is not None and not (refused_by and refused_by in result["stderr"]):
            self.check_attempted(result, marker, language)
        return result

    def _execute(
        self,
        code: str,
        language: str,
        timeout_seconds: float,
        policy: dict[str, Any] | None,
        research: bool,
    ) -> dict[str, Any]:
        start = time.monotonic()
        result = self.api.execute_code(
            code, language, None, timeout_seconds, policy or self.policy(research=research)
        )
        self.elapsed.append(time.monotonic() - start)
        self.results.append(result)
        RESULTS.count_violations(self.mode, [v["category"] for v in result["violation_details"]])
        # Shown by pytest when the test fails: what the hostile code saw (evidence, not verdict).
        print(f"--- {self.mode} {language}: success={result['success']} exit={result['exit_code']}")
        print(f"violations={result['violations']} error={result['error']}")
        print("stdout:", result["stdout"][-1500:], "\nstderr:", result["stderr"][-1500:])
        return result

    def check_attempted(self, result: dict[str, Any], marker: Marker, language: str) -> None:
        """Note a run whose output lacks its marker: its code stopped before the attempt."""
        missing = marker.not_attempted(result)
        if missing is not None:
            self.unattempted.append(f"{language}: {missing}")

    def run_beside(self, code: str, language: str = "python", **kwargs: Any) -> dict[str, Any]:
        """Run hostile code while a plain run starts a second later: the host must serve it."""
        api, seen = self.api, []

        def bystander() -> None:
            time.sleep(1.0)
            seen.append(api.execute_code("print('bystander')", "python", None, 60, self.policy()))

        thread = threading.Thread(target=bystander, name="sec-bystander")
        thread.start()
        try:
            return self.run(code, language, **kwargs)
        finally:
            thread.join(120)
            other = seen[0] if seen else None
            ok = other is not None and other["success"] and other["stdout"] == "bystander\n"
            why = "no result" if other is None else other["error"] or other["violations"]
            self.expect(ok, f"a plain run beside the attack failed: {why}")

    @contextlib.contextmanager
    def measuring_memory(self) -> Iterator[dict[str, int]]:
        """Measure this process's Python allocations (tracemalloc peak) and RSS while inside."""
        figures: dict[str, int] = {}
        sampler = hostenv.Sampler({"rss": hostenv.rss_bytes})
        tracemalloc.start()
        try:
            with sampler.running():
                baseline = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                yield figures
                figures["peak"] = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        figures["rss_rise"] = sampler.rise("rss")

    def _check_mode(self, result: dict[str, Any]) -> None:
        expected = "docker" if self.mode.startswith("docker") else self.mode
        if result["error_type"] in JUDGEABLE_ERRORS:  # the code ran: the host still decides
            self.notes.append(f"the run ended in {result['error_type']}: {result['error']}")
        elif result["error"]:
            self.errors.append(f"the run could not happen: {result['error']}")
        elif result["sandbox_mode"] != expected:
            self.errors.append(f"ran in {result['sandbox_mode']!r}, not {expected!r}")
        elif self.mode == "docker-runsc" and not _is_runsc(result):
            self.errors.append(f"ran on runtime {result['isolation']['runtime']!r}, not runsc")

    # ------------------------------------------------------------------ judging

    def expect(self, ok: bool, problem: str) -> None:
        """A case-specific finding: when ``ok`` is false the host was affected (an escape)."""
        if not ok:
            self.problems.append(problem)

    def require(self, ok: bool, why: str) -> None:
        """A precondition of the case: when ``ok`` is false the case proves nothing (an error)."""
        if not ok:
            self.errors.append(why)

    def finish(self, *, control: bool = True) -> None:
        """Judge by the host, record the verdict, and fail the test on an escape or error."""
        self.finished = True
        self.problems += self.check.problems(self.results)
        if hostenv.tree_state(self.project) != self._project_before:
            self.problems.append("the project directory (mounted read-only) changed")
        for canary in (self.host.world_canary, self.host.root_canary):
            if not canary.is_file():
                self.problems.append(f"canary {canary} is gone")
        if control and not self.errors:
            self._judge_still_serving()
        self.close()
        self.problems += leftovers(
            self.host.client,
            self.results,
            markers=[self.token, str(self.tmpdir)],
            workdirs=self.tmpdir,
            any_container=True,
        )
        state = case_state(self.problems, self.errors, self.unattempted)
        detail = "; ".join(self.problems or self.errors or self.unattempted or self.notes)
        RESULTS.record(self.case, self.mode, Cell(state, detail[:600]), self.description)
        assert state == CONTAINED, f"{self.case} in {self.mode}: {state}: {detail}"

    def close(self) -> None:
        """Close this mode's MemoryAPI (its pool and watchdog go with it)."""
        if self._api is not None:
            api, self._api = self._api, None
            api.close()

    def _judge_still_serving(self) -> None:
        result = self.api.execute_code("print('still serving')", "python", None, 60, self.policy())
        if not (result["success"] and result["stdout"] == "still serving\n"):
            problem = result["error"] or result["stderr"][-300:] or result["violations"]
            self.problems.append(f"{self.mode} no longer serves a plain run: {problem}")
