"""The bounded load of ``make cluster-test``: locust users calling the remote client, as a library.

Run as ``python -m tests.cluster.load URL TOKEN OUT.json --users 12 --seconds 45`` (the test
does, in a process of its own: locust patches the standard library with gevent on import, so
``time.sleep`` here is gevent's). It prints ``started`` once every user runs, and at the end
writes to OUT.json every call: its kind, start and end (seconds since the start), success,
execution id, session id, the error's class and message, and whether a session's state was as
expected.

Users (a fixed count, no ramp: all start at once):

- ``RunUser``: one small python run after another through ``MemoryAPI.connect``.
- ``SessionUser`` (three of them): opens a session on node-1, node-2 and node-3 respectively
  (opening through the load balancer until the id names that node), then increments a counter
  in it call after call, checking it counts 1, 2, 3 ... . A session that ends is replaced by
  one on whichever node the load balancer picks.

Once the time is up each user stops after its call in progress; a call still unanswered
:data:`STOP_TIMEOUT_S` later counts as hung (``pending`` in the output).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from athena.mcp.memory_api import MemoryAPI
from athena.service.client import RemoteMemoryAPI, RemoteSession

CLIENT_TIMEOUT_S = 30.0  # the remote client's own timeout (a run adds its timeout plus 60 s)
RUN_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0
SESSION_NODES = ("node-1", "node-2", "node-3")


@dataclass
class Load:
    """The load's settings (set once by :func:`main`) and what it recorded."""

    url: str = ""
    token: str = ""
    seconds: float = 45.0
    t0: float = field(default_factory=time.monotonic)
    calls: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)


LOAD = Load()  # the users are built by locust, without arguments: they read this
_ids = itertools.count()
_session_users = itertools.count()


def now() -> float:
    """Seconds since the load started."""
    return round(time.monotonic() - LOAD.t0, 3)


class Call:
    """Records one call: pending while it runs, then in the calls with its outcome."""

    def __init__(self, kind: str, **fields: Any) -> None:
        self.key = next(_ids)
        self.entry: dict[str, Any] = {"kind": kind, "start": now(), "ok": False, **fields}
        LOAD.pending[self.key] = self.entry

    def __enter__(self) -> dict[str, Any]:
        return self.entry

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any
    ) -> bool:
        self.entry["end"] = now()
        if exc is not None:
            self.entry["error"] = type(exc).__name__
            self.entry["message"] = str(exc)[:300]
        LOAD.pending.pop(self.key, None)
        LOAD.calls.append(self.entry)
        events.request.fire(  # type: ignore[no-untyped-call]
            request_type=self.entry["kind"],
            name=self.entry["kind"],
            response_time=(self.entry["end"] - self.entry["start"]) * 1000,
            response_length=0,
            exception=exc,
            context={},
        )
        # A failed call is an outcome to record, not an error of the user: it goes on.
        return exc is None or isinstance(exc, Exception)


def stop_when_the_time_is_up() -> None:
    """Stop the calling user once the load's time is up (its calls so far are all answered)."""
    if now() >= LOAD.seconds:
        raise StopUser()


class RunUser(User):
    """One small python run after another."""

    wait_time = constant(0)
    weight = 1

    def on_start(self) -> None:
        self.api: RemoteMemoryAPI = MemoryAPI.connect(
            LOAD.url, token=LOAD.token, timeout=CLIENT_TIMEOUT_S
        )

    def on_stop(self) -> None:
        self.api.close()

    @task
    def small_run(self) -> None:
        stop_when_the_time_is_up()
        with Call("run") as call:
            result = self.api.execute_code("print(sum(range(10)))", timeout_seconds=RUN_TIMEOUT_S)
            call["execution_id"] = result["execution_id"]
            call["ok"] = result["success"] and result["stdout"] == "45\n"
            call["result_error"] = result["error"]


class SessionUser(User):
    """A counter in a session on one node, checked call after call."""

    wait_time = constant(0.05)
    fixed_count = len(SESSION_NODES)

    def on_start(self) -> None:
        self.api: RemoteMemoryAPI = MemoryAPI.connect(
            LOAD.url, token=LOAD.token, timeout=CLIENT_TIMEOUT_S
        )
        self.target: str | None = SESSION_NODES[next(_session_users) % len(SESSION_NODES)]
        self.session: RemoteSession | None = None
        self.count = 0

    def on_stop(self) -> None:
        if self.session is not None:
            with Call("close", session_id=self.session.session_id) as call:
                self.session.close()
                call["ok"] = True
        self.api.close()

    def open(self) -> None:
        """Open a session (on the target node the first time: others are closed again)."""
        for _ in range(20):
            session = None
            with Call("open") as call:
                session = self.api.open_session(idle_timeout_seconds=120)
                call["session_id"] = session.session_id
                call["ok"] = session.execute_code("n = 0")["success"]
            if session is None or not call["ok"]:
                return  # the next step tries again
            if self.target is None or session.session_id.startswith(self.target + "."):
                self.session, self.count, self.target = session, 0, None
                return
            session.close()
        raise RuntimeError(f"no session landed on {self.target} in 20 tries")

    @task
    def step(self) -> None:
        stop_when_the_time_is_up()
        if self.session is None:
            self.open()
            return
        session = self.session
        with Call("session", session_id=session.session_id) as call:
            try:
                result = session.execute_code("n += 1\nprint(n)", timeout_seconds=RUN_TIMEOUT_S)
            except Exception:
                self.session = None  # ended or its node gone: the next step opens another
                raise
            self.count += 1
            call["execution_id"] = result["execution_id"]
            call["ok"] = result["success"]
            call["state_ok"] = result["stdout"] == f"{self.count}\n"


def main(argv: list[str]) -> int:
    """Run the load and write the calls; the exit status is 0 unless the load itself broke."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=45.0)
    args = parser.parse_args(argv)
    LOAD.url, LOAD.token, LOAD.seconds = args.url, args.token, args.seconds
    env = Environment(user_classes=[RunUser, SessionUser], stop_timeout=STOP_TIMEOUT_S)
    runner = env.create_local_runner()
    LOAD.t0 = time.monotonic()
    runner.start(args.users, spawn_rate=args.users)
    print("started", flush=True)
    time.sleep(args.seconds)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (LOAD.pending or runner.user_count) and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.quit()
    out = {
        "seconds": now(),
        "users": args.users,
        "calls": LOAD.calls,
        "pending": list(LOAD.pending.values()),
    }
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
