"""Resource attacks: fork and memory bombs, disk fill, output floods, stdin, kill -9 -1.

Each is judged by the host: how many processes, how much memory and disk it took while it ran
(sampled), whether the orchestrator's own memory stayed flat, and the common checks of
:meth:`Sec.finish` (nothing left, the engine and the mode still serving).
"""

from __future__ import annotations

import pytest

from tests.security import hostenv
from tests.security.harness import Sec

pytestmark = pytest.mark.security

MIB = 1024 * 1024
# Far above what strict allows (64 pids, 256 MiB, 64 MiB tmpfs); far below what an unlimited
# bomb would take.
PROCESS_RISE_LIMIT = 400
MEMORY_RISE_LIMIT = 1536 * MIB
STORAGE_RISE_LIMIT = 512 * MIB
# The orchestrator keeps head and tail of each stream (1 MiB each under strict).
PYTHON_HEAP_LIMIT = 48 * MIB
RSS_RISE_LIMIT = 128 * MIB

FORK_BOMB_PYTHON = """
@ATTEMPT@
import os, time
end = time.time() + 6
while time.time() < end:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""
FORK_BOMB_BASH = "@ATTEMPT@\n:(){ :|:& };:\nsleep 6\n"
FORK_BOMB_RUBY = """
@ATTEMPT@
stop = Time.now + 6
while Time.now < stop
  begin
    fork
  rescue SystemCallError, NotImplementedError
    sleep 0.01
  end
end
"""
MEMORY_BOMB = {
    "python": "@ATTEMPT@\nhog = []\nwhile True:\n    hog.append('x' * (64 * 1024 * 1024) + str(len(hog)))\n",
    "javascript": "@ATTEMPT@\nconst hog = [];\nwhile (true) hog.push(Buffer.alloc(64 * 1024 * 1024, 1));\n",
    "bash": "@ATTEMPT@\nx=xxxxxxxxxxxxxxxx\nwhile :; do x=$x$x; done\n",
    "ruby": "@ATTEMPT@\nhog = []\nloop { hog << ('x' * (64 * 1024 * 1024)) + hog.size.to_s }\n",
}
# Twelve processes of 200 MiB each: a limit per process is not a limit per run.
MEMORY_BOMB_FORKED = """
@ATTEMPT@
import os, time
children = []
for _ in range(12):
    pid = os.fork()
    if pid == 0:
        hog = 'x' * (200 * 1024 * 1024)
        time.sleep(3)
        os.kill(os.getpid(), 9)  # not os._exit: restricted compiles no _names
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""
# 1 GiB per writable place, in 16 MiB files (the file size limit), until the first refusal.
DISK_FILL = """
@ATTEMPT@
for d in /tmp /dev/shm "$HOME" "$TMPDIR" "$PWD" /var/tmp /run; do
  [ -d "$d" ] && [ -w "$d" ] || continue
  for n in $(seq 1 64); do
    dd if=/dev/zero of="$d/fill-@TOKEN@-$n" bs=1M count=16 2>/dev/null || break
  done
  echo "$d: $(du -sm "$d" 2>/dev/null | cut -f1) MiB"
done
"""
FLOODS = {
    "python": (
        "import sys\nline = 'x' * 65535 + '\\n'\n@ATTEMPT@\n"
        "for _ in range(3200):\n    sys.stdout.write(line)\n"
    ),
    "javascript": (
        "const fs = require('fs');\nconst line = 'x'.repeat(65535) + '\\n';\n@ATTEMPT@\n"
        "for (let i = 0; i < 3200; i++) fs.writeSync(1, line);\n"
    ),
    "bash": "@ATTEMPT@\nhead -c 209715200 /dev/zero | tr '\\0' x\nhead -c 104857600 /dev/zero | tr '\\0' y >&2\n",
    "ruby": "line = 'x' * 65535 + \"\\n\"\n@ATTEMPT@\n3200.times { $stdout.write(line) }\n",
}
RESTRICTED_FLOOD = "line = 'x' * 65535\n@ATTEMPT@\nfor i in range(3200):\n    print(line)\n"
STDIN_READS = {
    "python": "@ATTEMPT@\nimport sys\ndata = sys.stdin.read()\nprint('eof', len(data))\ninput()\n",
    "javascript": "@ATTEMPT@\nconst d = require('fs').readFileSync(0);\nconsole.log('eof', d.length);\n",
    "bash": '@ATTEMPT@\nread -r line; echo "read=$?"\ncat\necho done\n',
    "ruby": '@ATTEMPT@\ndata = $stdin.read\nputs "eof #{data.size}"\ngets\n',
}
RESTRICTED_STDIN = "@ATTEMPT@\nprint('no stdin here')\n"  # no sys in the restricted mode
KILL_ALL = {
    "python": "@ATTEMPT@\nimport os, signal\nos.kill(-1, signal.SIGKILL)\nprint('survived')\n",
    "javascript": "@ATTEMPT@\nprocess.kill(-1, 'SIGKILL');\nconsole.log('survived');\n",
    "bash": "@ATTEMPT@\nkill -9 -1\necho survived\n",
    "ruby": "@ATTEMPT@\nProcess.kill(:KILL, -1)\nputs 'survived'\n",
}


def _process_rise(sec: Sec, code: str, language: str) -> None:
    sampler = hostenv.Sampler({"processes": hostenv.count_processes}, interval=0.05)
    with sampler.running():
        sec.run_beside(code, language, timeout_seconds=10)
    rise = sampler.rise("processes")
    sec.notes.append(f"host processes rose by {rise} at most")
    sec.expect(rise < PROCESS_RISE_LIMIT, f"the host's process count rose by {rise}")


def test_fork_bomb_python(sec: Sec) -> None:
    """A Python fork bomb is held by the pids limit; the host serves a run beside it."""
    sec.languages("python")
    _process_rise(sec, FORK_BOMB_PYTHON, "python")
    sec.finish()


def test_fork_bomb_bash(sec: Sec) -> None:
    """The bash fork bomb `:(){ :|:& };:` is held by the pids limit; a run beside it succeeds."""
    sec.languages("bash")
    _process_rise(sec, FORK_BOMB_BASH, "bash")
    sec.finish()


def test_fork_bomb_ruby(sec: Sec) -> None:
    """A Ruby fork bomb is held by the pids limit; the host serves a run beside it."""
    sec.languages("ruby")
    _process_rise(sec, FORK_BOMB_RUBY, "ruby")
    sec.finish()


def test_memory_bomb(sec: Sec) -> None:
    """Memory bombs in every language stop near the limit; host memory and a run beside hold."""
    for language in sec.languages(*MEMORY_BOMB):
        sampler = hostenv.Sampler({"available": hostenv.mem_available_bytes})
        with sampler.running():
            result = sec.run_beside(MEMORY_BOMB[language], language, timeout_seconds=15)
        drop = sampler.drop("available")
        sec.notes.append(f"{language}: host MemAvailable fell by {drop // MIB} MiB at most")
        sec.expect(drop < MEMORY_RISE_LIMIT, f"{language}: host memory fell by {drop // MIB} MiB")
        sec.expect(not result["success"], f"{language}: the memory bomb ran to success")
    sec.finish()


def test_memory_bomb_forked(sec: Sec) -> None:
    """Twelve 200 MiB processes share the run's memory limit: host memory stays available."""
    sec.languages("python")
    sampler = hostenv.Sampler({"available": hostenv.mem_available_bytes})
    with sampler.running():
        sec.run_beside(MEMORY_BOMB_FORKED, "python", timeout_seconds=20)
    drop = sampler.drop("available")
    sec.notes.append(f"host MemAvailable fell by {drop // MIB} MiB at most")
    sec.expect(drop < MEMORY_RISE_LIMIT, f"host memory fell by {drop // MIB} MiB")
    sec.finish()


def test_disk_fill(sec: Sec) -> None:
    """Filling /tmp, /dev/shm and the work dir is capped by tmpfs sizes: host disk and RAM hold."""
    sec.languages("bash")
    where = str(sec.tmpdir)
    sampler = hostenv.Sampler(
        {"shmem": hostenv.shmem_bytes, "disk": lambda: hostenv.disk_free_bytes(where)}
    )
    with sampler.running():
        result = sec.run_beside(DISK_FILL, "bash", timeout_seconds=60)
    shmem, disk = sampler.rise("shmem"), sampler.drop("disk")
    sec.notes.append(f"host shmem +{shmem // MIB} MiB, disk -{disk // MIB} MiB at most")
    for name, rise in (("shared memory (tmpfs)", shmem), ("free disk", disk)):
        sec.expect(
            rise < STORAGE_RISE_LIMIT,
            f"host {name} moved by {rise // MIB} MiB: {result['stdout']!r}",
        )
    after = hostenv.disk_free_bytes(where)
    sec.expect(sampler.first["disk"] - after < STORAGE_RISE_LIMIT, "the filled disk was not freed")
    sec.finish()


@pytest.mark.parametrize("language", sorted(FLOODS))
def test_output_flood(sec: Sec, language: str) -> None:
    """A 200 MB output flood leaves the orchestrator's memory flat and the output capped."""
    sec.languages(language)
    code = RESTRICTED_FLOOD if sec.mode == "restricted" else FLOODS[language]
    with sec.measuring_memory() as memory:
        result = sec.run(code, language, timeout_seconds=60)
    sec.notes.append(f"heap peak {memory['peak'] // MIB} MiB, RSS +{memory['rss_rise'] // MIB} MiB")
    sec.expect(memory["peak"] < PYTHON_HEAP_LIMIT, f"heap peak {memory['peak'] // MIB} MiB")
    sec.expect(memory["rss_rise"] < RSS_RISE_LIMIT, f"RSS rose {memory['rss_rise'] // MIB} MiB")
    for stream in ("stdout", "stderr"):
        size = len(result[stream].encode())
        sec.expect(size < 2 * MIB, f"{stream} came back with {size // MIB} MiB")
    sec.finish()


@pytest.mark.parametrize("language", ["python", "ruby"])
def test_output_value_flood(sec: Sec, language: str) -> None:
    """A 64 MB `output` value is refused or capped without the orchestrator's memory growing."""
    sec.languages(language)
    with sec.measuring_memory() as memory:
        code = "@ATTEMPT@\noutput = 'z' * (64 * 1024 * 1024)"  # Python and Ruby alike
        result = sec.run(code, language, timeout_seconds=60)
    sec.notes.append(f"heap peak {memory['peak'] // MIB} MiB, RSS +{memory['rss_rise'] // MIB} MiB")
    sec.expect(memory["peak"] < PYTHON_HEAP_LIMIT, f"heap peak {memory['peak'] // MIB} MiB")
    sec.expect(memory["rss_rise"] < RSS_RISE_LIMIT, f"RSS rose {memory['rss_rise'] // MIB} MiB")
    sec.expect(len(str(result["output"] or "")) < 2 * MIB, "the output value came back whole")
    sec.finish()


def test_stdin_read(sec: Sec) -> None:
    """Reading stdin sees end-of-file at once in every language: the run never hangs on it."""
    for language in sec.languages(*STDIN_READS):
        code = RESTRICTED_STDIN if sec.mode == "restricted" else STDIN_READS[language]
        result = sec.run(code, language, timeout_seconds=20)
        sec.expect(sec.elapsed[-1] < 10, f"{language}: reading stdin took {sec.elapsed[-1]:.1f} s")
        sec.expect(
            "timeout" not in [v["category"] for v in result["violation_details"]],
            f"{language}: reading stdin hung until the timeout",
        )
    sec.finish()


def test_kill_all(sec: Sec) -> None:
    """`kill -9 -1` reaches no host process (decoys as root, 65534, 61000) nor a run beside it."""
    for language in sec.languages(*KILL_ALL):
        sec.run_beside(KILL_ALL[language], language, timeout_seconds=10)
    sec.finish()


# NUL, invalid UTF-8 (a UTF-16 surrogate's encoding among it), terminal escapes, and an `output`
# that JSON cannot write: bytes a reader of the result must never choke on.
RUBY_BYTES = r"""
@ATTEMPT@
$stdout.write("a\x00b\xff\xed\xa0\x80c\n".b)
$stderr.write("\xc3\x28\x00\e]0;title\a\r\n".b)
output = { 'bad' => "\xed\xa0\x80".dup.force_encoding('UTF-8') }
"""


def test_ruby_bytes_that_are_not_text(sec: Sec) -> None:
    """Bytes that are not UTF-8 text come back repaired (strict UTF-8), the run's status intact."""
    sec.languages("ruby")
    result = sec.run(RUBY_BYTES, "ruby", timeout_seconds=20)
    for stream in ("stdout", "stderr"):
        try:
            result[stream].encode("utf-8")
        except UnicodeEncodeError as exc:
            sec.expect(False, f"{stream} holds text that is not UTF-8: {exc}")
    sec.expect("a\x00b\ufffd" in result["stdout"], f"stdout came back as {result['stdout']!r}")
    sec.expect(result["error"] is None, f"the report broke: {result['error']}")
    sec.expect(result["exit_code"] == 0 and result["output"] is None, f"result: {result['output']}")
    sec.finish()
