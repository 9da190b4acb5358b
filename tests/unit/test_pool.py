"""Unit tests of WarmPool with fake sandboxes: demand, fill, take, TTL, failures, keys, close."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from orchestrator.backends.pool import _LAUNCH_WORKERS, WarmPool


@dataclass(eq=False)
class FakeSandbox:
    """A pooled sandbox: an id, the key it was launched for, and whether it still lives."""

    id: int
    key: str
    alive: bool = True


class Launcher:
    """Fake launch/discard callables that record every call (thread-safe)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds each launch takes
        self.fail = False  # raise instead of launching
        self.fail_keys: set[str] = set()  # keys whose launches raise
        self.gate: threading.Event | None = None  # when set up, each launch waits for it
        self.gates: dict[str, threading.Event] = {}  # a key's launches wait for its own event
        self.entered = threading.Event()  # a launch is in progress
        self.launched: list[FakeSandbox] = []
        self.discarded: list[FakeSandbox] = []
        self.failures = 0
        self.failed: Counter[str] = Counter()  # failed launches per key
        self.in_flight: Counter[str] = Counter()  # launches in progress per key
        self.most_in_flight = 0  # the most launches in progress at once, all keys together
        self.most_in_flight_per_key = 0  # the most in progress at once for one key
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def launch(self, key: str) -> FakeSandbox:
        with self._lock:
            self.in_flight[key] += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight.total())
            self.most_in_flight_per_key = max(self.most_in_flight_per_key, self.in_flight[key])
        try:
            return self._launch(key)
        finally:
            with self._lock:
                self.in_flight[key] -= 1

    def _launch(self, key: str) -> FakeSandbox:
        self.entered.set()
        gate = self.gates.get(key, self.gate)
        if gate is not None:
            gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if self.fail or key in self.fail_keys:
                self.failures += 1
                self.failed[key] += 1
                if self.fail:
                    raise RuntimeError("engine down")
                raise RuntimeError(f"no room for {key} (failure {self.failed[key]})")
            sandbox = FakeSandbox(next(self._ids), key)
            self.launched.append(sandbox)
            return sandbox

    def discard(self, sandbox: FakeSandbox) -> None:
        with self._lock:
            self.discarded.append(sandbox)

    def launched_for(self, key: str) -> int:
        with self._lock:
            return sum(1 for s in self.launched if s.key == key)

    def failed_for(self, key: str) -> int:
        with self._lock:
            return self.failed[key]

    def launching(self) -> int:
        with self._lock:
            return self.in_flight.total()

    def release(self) -> None:
        """Let every blocked launch go on."""
        for gate in [self.gate, *self.gates.values()]:
            if gate is not None:
                gate.set()


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def is_alive(sandbox: FakeSandbox) -> bool:
    return sandbox.alive


def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.005)
    return True


def failed_times(pool: WarmPool[str, FakeSandbox], launcher: Launcher, key: str, n: int) -> bool:
    """Wait until ``key``'s launches failed exactly ``n`` times and the pool took in the last one."""
    error = f"RuntimeError: no room for {key} (failure {n})"
    return eventually(lambda: launcher.failed_for(key) == n and pool.last_error(key) == error)


def settle() -> None:
    """Give the worker threads a moment: only ever before asserting that nothing happened."""
    time.sleep(0.05)


def pool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("athena-pool")}


PoolFactory = Callable[..., tuple[WarmPool[str, FakeSandbox], Launcher]]


@pytest.fixture(autouse=True)
def _joins_its_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"threads left running: {left}"


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    """Build pools over a fresh Launcher; close them all afterwards."""
    pools: list[WarmPool[str, FakeSandbox]] = []
    launchers: list[Launcher] = []

    def make(
        sizes: dict[str, int] | None = None,
        launcher: Launcher | None = None,
        **kwargs: object,
    ) -> tuple[WarmPool[str, FakeSandbox], Launcher]:
        launcher = launcher or Launcher()
        table = sizes or {}
        pool: WarmPool[str, FakeSandbox] = WarmPool(
            launcher.launch,
            launcher.discard,
            is_alive,
            size_for=lambda key: table.get(key, 2),
            **kwargs,  # type: ignore[arg-type]
        )
        pools.append(pool)
        launchers.append(launcher)
        return pool, launcher

    yield make
    for launcher in launchers:  # a test that failed half-way may leave a launch blocked
        launcher.release()
    for pool in pools:
        pool.close()


# --------------------------------------------------------------------------- demand and fill


def test_nothing_is_launched_before_demand(make_pool: PoolFactory) -> None:
    """A new pool starts no thread and launches nothing until a key is asked for."""
    before = pool_threads()
    pool, launcher = make_pool()
    time.sleep(0.05)
    assert launcher.launched == []
    assert pool_threads() == before
    assert pool.ready_count("a") == 0


def test_prewarm_fills_the_key_to_its_size(make_pool: PoolFactory) -> None:
    """prewarm(key) returns True and the key fills to size_for(key), no more."""
    pool, launcher = make_pool({"a": 3})
    assert pool.prewarm("a", timeout=2) is True
    assert eventually(lambda: pool.ready_count("a") == 3)
    time.sleep(0.05)
    assert pool.ready_count("a") == 3
    assert launcher.launched_for("a") == 3


def test_take_never_hands_out_the_same_sandbox_twice(make_pool: PoolFactory) -> None:
    """Twenty takes in a row give twenty distinct sandboxes, each launched and never discarded."""
    pool, launcher = make_pool({"a": 2})
    taken = [pool.take("a", wait=2) for _ in range(20)]
    assert all(s is not None for s in taken)
    ids = [s.id for s in taken if s is not None]
    assert len(set(ids)) == 20
    launched_ids = {s.id for s in launcher.launched}
    assert set(ids) <= launched_ids
    assert not {s.id for s in launcher.discarded} & set(ids)


def test_the_pool_refills_after_a_take(make_pool: PoolFactory) -> None:
    """After a take the key is topped up to its size again with a new sandbox."""
    pool, launcher = make_pool({"a": 2})
    pool.prewarm("a", timeout=2)
    assert eventually(lambda: pool.ready_count("a") == 2)
    taken = pool.take("a")
    assert taken is not None
    assert eventually(lambda: pool.ready_count("a") == 2)
    assert launcher.launched_for("a") == 3


def full_delayed_pool(
    make_pool: PoolFactory, clock: FakeClock
) -> tuple[WarmPool[str, FakeSandbox], Launcher]:
    """A pool of 2 for key "a" with a 30 s refill delay on ``clock``, filled."""
    pool, launcher = make_pool({"a": 2}, refill_delay=30.0, clock=clock)
    pool.prewarm("a", timeout=2)
    assert eventually(lambda: pool.ready_count("a") == 2)
    return pool, launcher


def test_a_take_that_leaves_others_ready_holds_the_refill_back(make_pool: PoolFactory) -> None:
    """With refill_delay, the replacement waits while the key still has a ready sandbox."""
    clock = FakeClock()
    pool, launcher = full_delayed_pool(make_pool, clock)
    assert pool.take("a") is not None
    settle()
    assert launcher.launched_for("a") == 2  # held back: one is still ready
    clock.advance(31)  # the worker looks again on its next tick (1 s of real time)
    assert eventually(lambda: pool.ready_count("a") == 2, timeout=3)
    assert launcher.launched_for("a") == 3


def test_a_take_that_empties_the_key_refills_at_once(make_pool: PoolFactory) -> None:
    """The delay never applies to a key left with nothing ready: the next caller would go cold."""
    pool, launcher = full_delayed_pool(make_pool, FakeClock())
    assert pool.take("a") is not None
    assert pool.take("a") is not None  # the key is empty now: its delay is lifted
    assert eventually(lambda: pool.ready_count("a") == 2)
    assert launcher.launched_for("a") == 4


def test_a_negative_refill_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="refill_delay must be 0 or more"):
        WarmPool(lambda k: k, lambda s: None, lambda s: True, size_for=lambda k: 1, refill_delay=-1)


def test_each_key_gets_its_own_size(make_pool: PoolFactory) -> None:
    """size_for is asked per key: a key of size 1 and one of size 3 fill to 1 and 3."""
    pool, launcher = make_pool({"a": 1, "b": 3})
    pool.prewarm("a", timeout=2)
    pool.prewarm("b", timeout=2)
    assert eventually(lambda: (pool.ready_count("a"), pool.ready_count("b")) == (1, 3))
    time.sleep(0.05)
    assert (pool.ready_count("a"), pool.ready_count("b")) == (1, 3)
    assert (launcher.launched_for("a"), launcher.launched_for("b")) == (1, 3)


def test_only_the_newest_keys_keep_sandboxes_and_old_keys_are_forgotten(
    make_pool: PoolFactory,
) -> None:
    """With max_keys=2, a third key asked for empties and forgets the least recently used one."""
    pool, launcher = make_pool({"a": 1, "b": 1, "c": 1}, max_keys=2)
    for key in ("a", "b"):
        assert pool.prewarm(key, timeout=2)
    time.sleep(0.01)  # a later demand for c
    assert pool.prewarm("c", timeout=2)
    assert eventually(lambda: "a" not in pool.ready_counts())
    assert pool.ready_counts() == {"b": 1, "c": 1}
    assert [s.id for s in launcher.discarded] == [s.id for s in launcher.launched[:1]]


def test_ever_new_keys_hold_at_most_max_keys_sandboxes(make_pool: PoolFactory) -> None:
    """Fifty distinct keys asked for in turn leave at most max_keys ready sandboxes and slots."""
    pool, _ = make_pool(max_keys=3)
    for n in range(50):
        pool.take(f"k{n}")
    settle()
    assert eventually(lambda: len(pool.ready_counts()) <= 3)
    assert eventually(lambda: sum(pool.ready_counts().values()) <= 3 * 2)


def test_take_without_wait_on_an_empty_pool_is_the_cold_path(make_pool: PoolFactory) -> None:
    """take(wait=0) on an empty pool returns None at once and starts filling the key."""
    pool, _ = make_pool({"a": 2}, Launcher(delay=0.05))
    started = time.monotonic()
    assert pool.take("a", wait=0) is None
    assert time.monotonic() - started < 0.04
    assert eventually(lambda: pool.ready_count("a") == 2)


def test_take_with_wait_waits_for_the_refill(make_pool: PoolFactory) -> None:
    """take(wait=...) on an empty pool blocks until the refill thread has a sandbox ready."""
    pool, launcher = make_pool({"a": 1}, Launcher(delay=0.05))
    sandbox = pool.take("a", wait=2)
    assert sandbox is not None
    assert sandbox is launcher.launched[0]


# --------------------------------------------------------------------------- dead and expired


def test_dead_sandboxes_are_never_handed_out_and_are_discarded(make_pool: PoolFactory) -> None:
    """take skips sandboxes whose is_alive is False, discards them and returns a live one."""
    pool, launcher = make_pool({"a": 2})
    pool.prewarm("a", timeout=2)
    assert eventually(lambda: pool.ready_count("a") == 2)
    dead = list(launcher.launched)
    for sandbox in dead:
        sandbox.alive = False
    taken = pool.take("a", wait=2)
    assert taken is not None and taken.alive
    assert taken not in dead
    assert eventually(lambda: all(s in launcher.discarded for s in dead))


def test_the_refill_thread_discards_sandboxes_that_die_while_idle(
    make_pool: PoolFactory,
) -> None:
    """An idle sandbox that dies is discarded and replaced without anyone taking it."""
    pool, launcher = make_pool({"a": 1})
    pool.prewarm("a", timeout=2)
    (first,) = launcher.launched
    first.alive = False
    pool.prewarm("a", timeout=0)  # demand wakes the refill thread before its 1 s tick
    assert eventually(lambda: first in launcher.discarded and launcher.launched_for("a") == 2)
    assert eventually(lambda: pool.ready_count("a") == 1)


def test_an_idle_key_shrinks_to_min_size_after_the_ttl(make_pool: PoolFactory) -> None:
    """A key without demand for idle_ttl shrinks to min_size; the surplus is discarded."""
    clock = FakeClock()
    pool, launcher = make_pool({"a": 3, "b": 1}, min_size=1, idle_ttl=10.0, clock=clock)
    pool.prewarm("a", timeout=2)
    assert eventually(lambda: pool.ready_count("a") == 3)
    clock.advance(10.5)
    assert pool.take("b", wait=0) is None  # demand elsewhere wakes the refill thread
    assert eventually(lambda: pool.ready_count("a") == 1 and len(launcher.discarded) == 2)
    assert {s.key for s in launcher.discarded} == {"a"}
    time.sleep(0.05)
    assert pool.ready_count("a") == 1
    assert launcher.launched_for("a") == 3


def test_a_key_within_its_ttl_keeps_its_size(make_pool: PoolFactory) -> None:
    """Before idle_ttl has passed the key keeps size_for(key) sandboxes."""
    clock = FakeClock()
    pool, launcher = make_pool({"a": 3, "b": 1}, min_size=1, idle_ttl=10.0, clock=clock)
    pool.prewarm("a", timeout=2)
    assert eventually(lambda: pool.ready_count("a") == 3)
    clock.advance(9.5)
    pool.take("b", wait=0)
    assert eventually(lambda: pool.ready_count("b") == 1)
    assert pool.ready_count("a") == 3
    assert launcher.discarded == []


# --------------------------------------------------------------------------- failures


def test_a_failing_launch_does_not_stop_the_pool(make_pool: PoolFactory) -> None:
    """Launch errors are logged, runs go cold (None), and the pool fills once launches work."""
    launcher = Launcher()
    launcher.fail = True
    pool, _ = make_pool({"a": 1}, launcher)
    with capture_logs() as logs:
        assert pool.take("a", wait=0) is None
        assert eventually(lambda: launcher.failures >= 1)
        assert pool.take("a", wait=0) is None
    assert {"event": "could not start a pooled sandbox", "log_level": "warning"}.items() <= (
        logs[0].items()
    )
    assert logs[0]["error"] == "RuntimeError: engine down"
    launcher.fail = False
    sandbox = pool.take("a", wait=1.9)  # the backoff after one failure is 1 s
    assert sandbox is not None
    assert sandbox is launcher.launched[0]


def test_demand_does_not_cut_the_launch_backoff_short(make_pool: PoolFactory) -> None:
    """After a failed launch the pool waits out its backoff even while runs keep taking."""
    launcher = Launcher()
    launcher.fail = True
    pool, _ = make_pool({"a": 1}, launcher)
    pool.take("a", wait=0)
    assert eventually(lambda: launcher.failures == 1)
    deadline = time.monotonic() + 0.4  # well inside the 1 s backoff after one failure
    while launcher.failures == 1 and time.monotonic() < deadline:
        pool.take("a", wait=0)
        time.sleep(0.02)
    assert launcher.failures == 1


def test_take_with_a_fake_clock_still_times_out(make_pool: PoolFactory) -> None:
    """take(wait=0.2) returns None after about 0.2 s of real time, whatever the clock is."""
    launcher = Launcher()
    launcher.fail = True
    pool, _ = make_pool({"a": 1}, launcher, clock=FakeClock())
    got: list[FakeSandbox | None] = []
    taker = threading.Thread(target=lambda: got.append(pool.take("a", wait=0.2)))
    taker.start()
    taker.join(0.6)
    timed_out = not taker.is_alive()
    pool.close()  # wakes a taker still waiting
    taker.join(2)
    assert timed_out
    assert got == [None]


# --------------------------------------------------------------------------- keys apart


def test_a_key_that_always_fails_does_not_keep_other_keys_cold(make_pool: PoolFactory) -> None:
    """While key a's launches fail and a backs off, key b fills and refills at full speed."""
    clock = FakeClock()  # a's backoff never ends unless the test moves the clock
    launcher = Launcher()
    launcher.fail_keys = {"a"}
    pool, _ = make_pool({"a": 2, "b": 2}, launcher, clock=clock)
    assert pool.take("a") is None
    assert failed_times(pool, launcher, "a", 1)
    assert pool.prewarm("b", timeout=5) is True
    taken = [pool.take("b", wait=5) for _ in range(6)]
    assert all(s is not None and s.key == "b" for s in taken)
    assert eventually(lambda: pool.ready_count("b") == 2)
    assert launcher.failed_for("a") == 1  # a waited out its backoff all along
    assert pool.ready_count("a") == 0


def test_a_hanging_launch_does_not_hold_other_keys(make_pool: PoolFactory) -> None:
    """While a launch for key a hangs, keys b and c fill; a fills once its launch returns."""
    launcher = Launcher()
    launcher.gates["a"] = threading.Event()
    pool, _ = make_pool({"a": 1, "b": 2, "c": 2}, launcher)
    assert pool.take("a") is None
    assert launcher.entered.wait(2)
    assert pool.prewarm("b", timeout=5) is True
    assert pool.prewarm("c", timeout=5) is True
    assert eventually(lambda: (pool.ready_count("b"), pool.ready_count("c")) == (2, 2))
    assert pool.ready_count("a") == 0
    launcher.gates["a"].set()
    assert eventually(lambda: pool.ready_count("a") == 1)


def test_launches_run_in_parallel_across_keys_one_at_a_time_per_key(
    make_pool: PoolFactory,
) -> None:
    """Up to _LAUNCH_WORKERS launches run at once, never two for the same key."""
    launcher = Launcher()
    launcher.gate = threading.Event()
    keys = "abcde"
    pool, _ = make_pool(dict.fromkeys(keys, 3), launcher)
    for key in keys:
        assert pool.take(key) is None
    assert eventually(lambda: launcher.launching() == _LAUNCH_WORKERS)
    assert all(t.daemon for t in pool_threads())
    settle()
    assert launcher.launching() == _LAUNCH_WORKERS
    launcher.gate.set()
    assert eventually(lambda: all(pool.ready_count(k) == 3 for k in keys), timeout=5)
    assert launcher.most_in_flight == _LAUNCH_WORKERS
    assert launcher.most_in_flight_per_key == 1


def test_the_backoff_of_a_failing_key_doubles_up_to_a_cap(make_pool: PoolFactory) -> None:
    """Key a is retried 1, 2, 4, 8 then 10 s (the cap, not 16) after each failure, no sooner."""
    clock = FakeClock()
    launcher = Launcher()
    launcher.fail_keys = {"a"}
    pool, _ = make_pool({"a": 1, "poke": 0}, launcher, clock=clock)
    pool.take("a")
    assert failed_times(pool, launcher, "a", 1)
    for failures, delay in enumerate([1.0, 2.0, 4.0, 8.0, 10.0], start=1):
        clock.advance(delay - 0.25)
        pool.take("poke")  # demand for a key of size 0 only wakes the workers
        settle()
        assert launcher.failed_for("a") == failures, f"retried before {delay} s"
        clock.advance(0.5)
        pool.take("poke")
        assert failed_times(pool, launcher, "a", failures + 1), f"not retried after {delay} s"


def test_a_key_that_keeps_failing_waits_for_new_demand(make_pool: PoolFactory) -> None:
    """After six failures in a row a key is not retried until a take asks for it again."""
    clock = FakeClock()
    launcher = Launcher()
    launcher.fail_keys = {"a"}
    pool, _ = make_pool({"a": 1, "poke": 0}, launcher, clock=clock)
    pool.take("a")
    for failures in range(1, 6):
        assert failed_times(pool, launcher, "a", failures)
        clock.advance(10.0)
        pool.take("poke")
    started = time.monotonic()
    assert pool.take("a", wait=30) is None  # the sixth failure ends the wait
    assert time.monotonic() - started < 20
    assert launcher.failed_for("a") == 6
    clock.advance(1000.0)  # nobody asks for a: however long that lasts, it costs no launch
    pool.take("poke")
    settle()
    assert launcher.failed_for("a") == 6
    launcher.fail_keys.clear()
    sandbox = pool.take("a", wait=5)  # new demand: a is tried again at once
    assert sandbox is not None and sandbox.key == "a"
    assert launcher.failed_for("a") == 6


def test_demand_brings_back_a_key_that_gave_up_with_fresh_tries(make_pool: PoolFactory) -> None:
    """A take after a key gave up starts a new series: one launch at once, then backoff again."""
    clock = FakeClock()
    launcher = Launcher()
    launcher.fail_keys = {"a"}
    pool, _ = make_pool({"a": 1, "poke": 0}, launcher, clock=clock)
    pool.take("a")
    for failures in range(1, 7):
        assert failed_times(pool, launcher, "a", failures)
        clock.advance(10.0)
        pool.take("poke")
    settle()
    assert launcher.failed_for("a") == 6
    assert pool.take("a") is None
    assert failed_times(pool, launcher, "a", 7)
    pool.take("a")  # demand again, within the 1 s backoff of the new series
    settle()
    assert launcher.failed_for("a") == 7
    clock.advance(1.0)
    pool.take("poke")
    assert failed_times(pool, launcher, "a", 8)


def test_last_error_says_why_a_key_has_no_sandboxes(make_pool: PoolFactory) -> None:
    """last_error(key) is the key's last launch error, None for other keys and after a success."""
    clock = FakeClock()
    launcher = Launcher()
    launcher.fail_keys = {"a"}
    pool, _ = make_pool({"a": 1, "b": 1}, launcher, clock=clock)
    assert pool.last_error("a") is None
    pool.take("a")
    assert pool.prewarm("b", timeout=5) is True
    assert eventually(lambda: pool.last_error("a") is not None)
    assert pool.last_error("a") == "RuntimeError: no room for a (failure 1)"
    assert pool.last_error("b") is None
    assert pool.last_error("never asked for") is None
    launcher.fail_keys.clear()
    clock.advance(1.0)
    assert pool.take("a", wait=5) is not None
    assert pool.last_error("a") is None


# --------------------------------------------------------------------------- close


def test_close_discards_idle_sandboxes_stops_the_thread_and_refuses_takes(
    make_pool: PoolFactory,
) -> None:
    """close() discards every idle sandbox, ends the refill thread; take then returns None."""
    before = pool_threads()
    pool, launcher = make_pool({"a": 2, "b": 1})
    pool.prewarm("a", timeout=2)
    pool.prewarm("b", timeout=2)
    assert eventually(lambda: (pool.ready_count("a"), pool.ready_count("b")) == (2, 1))
    pool.close()
    assert sorted(s.id for s in launcher.discarded) == sorted(s.id for s in launcher.launched)
    assert len(launcher.discarded) == 3
    assert pool_threads() == before
    started = time.monotonic()
    assert pool.take("a", wait=1) is None
    assert pool.prewarm("a", timeout=1) is False
    assert time.monotonic() - started < 0.5
    assert (pool.ready_count("a"), pool.ready_count("b")) == (0, 0)
    assert len(launcher.launched) == 3


def test_a_sandbox_launched_while_closing_is_discarded(make_pool: PoolFactory) -> None:
    """A launch that finishes after close() began is discarded, not kept in the pool."""
    pool, launcher = make_pool({"idle": 1, "a": 1})
    pool.prewarm("idle", timeout=2)
    (idle,) = launcher.launched
    launcher.gate = threading.Event()
    launcher.entered.clear()
    assert pool.take("a", wait=0) is None
    assert launcher.entered.wait(2)
    closer = threading.Thread(target=pool.close)
    closer.start()
    assert eventually(lambda: idle in launcher.discarded)  # close() has begun
    launcher.gate.set()
    closer.join(2)
    assert not closer.is_alive()
    late = [s for s in launcher.launched if s.key == "a"]
    assert len(late) == 1
    assert late[0] in launcher.discarded
    assert pool.ready_count("a") == 0


def test_close_during_hanging_launches_discards_every_late_sandbox(
    make_pool: PoolFactory,
) -> None:
    """close() while two keys' launches hang: both sandboxes are discarded when they arrive."""
    before = pool_threads()
    launcher = Launcher()
    launcher.gates = {"a": threading.Event(), "b": threading.Event()}
    pool, _ = make_pool({"idle": 1, "a": 1, "b": 1}, launcher)
    assert pool.prewarm("idle", timeout=5) is True
    (idle,) = launcher.launched
    assert pool.take("a") is None
    assert pool.take("b") is None
    assert eventually(lambda: launcher.launching() == 2)
    closer = threading.Thread(target=pool.close)
    closer.start()
    assert eventually(lambda: idle in launcher.discarded)  # close() has begun
    launcher.release()
    closer.join(5)
    assert not closer.is_alive()
    late = [s for s in launcher.launched if s.key in {"a", "b"}]
    assert len(late) == 2
    assert all(s in launcher.discarded for s in late)
    assert (pool.ready_count("a"), pool.ready_count("b")) == (0, 0)
    assert pool_threads() == before
