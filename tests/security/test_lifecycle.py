"""Runs that try to outlive themselves: background daemons, files meant for the next run.

Every daemon carries the run's token in its argv and environment, so the judge finds it on the
host with ``ps``-like scanning of /proc (and its container with the engine) if it survived.
"""

from __future__ import annotations

import re

import pytest

from tests.security.harness import Sec

pytestmark = pytest.mark.security

DAEMONS = {
    "bash": r"""
@ATTEMPT@
export ATHENA_SEC_TOKEN=@TOKEN@
setsid bash -c 'exec -a @TOKEN@-setsid sleep 300' < /dev/null > /dev/null 2>&1 &
nohup bash -c 'exec -a @TOKEN@-nohup sleep 300' > /dev/null 2>&1 &
( ( exec -a @TOKEN@-double sleep 300 ) & )
bash -c "trap '' HUP TERM INT; while :; do sleep 1; done" @TOKEN@-trap > /dev/null 2>&1 &
disown -a
echo started
""",
    "python": r"""
@ATTEMPT@
import os, signal
os.environ['ATHENA_SEC_TOKEN'] = '@TOKEN@'
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execve('/bin/sleep', ['@TOKEN@-pydaemon', '300'], dict(os.environ))
    os.kill(os.getpid(), 9)  # not os._exit: restricted compiles no _names
os.waitpid(pid, 0)
print('started')
""",
    "javascript": r"""
@ATTEMPT@
const { spawn } = require('child_process');
const env = { ATHENA_SEC_TOKEN: '@TOKEN@', PATH: '/usr/bin:/bin' };
spawn('/bin/sleep', ['300'], { detached: true, stdio: 'ignore', argv0: '@TOKEN@-js', env }).unref();
spawn('/bin/bash', ['-c', "trap '' HUP TERM; exec -a @TOKEN@-jsbash sleep 300"],
      { detached: true, stdio: 'ignore', env }).unref();
console.log('started');
""",
    "ruby": r"""
@ATTEMPT@
ENV['ATHENA_SEC_TOKEN'] = '@TOKEN@'
pid = fork do
  Process.setsid
  fork do
    trap('TERM', 'IGNORE')
    trap('HUP', 'IGNORE')
    exec(['/bin/sleep', '@TOKEN@-rbdaemon'], '300')
  end
  exit!(0)
end
Process.wait(pid)
Process.detach(Process.spawn(['/bin/sleep', '@TOKEN@-rbspawn'], '300', pgroup: true,
                             in: :close, out: File::NULL, err: File::NULL))
puts 'started'
""",
}
IPC = {
    "python": r"""
@ATTEMPT@
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
key = int('@TOKEN@'[-7:], 16)
shmid = libc.shmget(key, 1 << 20, 0o1666)
print('shmget', shmid, ctypes.get_errno())
if shmid >= 0:
    address = libc.shmat(shmid, None, 0)
    if address not in (None, ctypes.c_void_p(-1).value):
        ctypes.memmove(address, b'@TOKEN@', len(b'@TOKEN@'))
print('msgget', libc.msgget(key, 0o1666), 'semget', libc.semget(key, 1, 0o1666))
""",
    "bash": "@ATTEMPT@\nipcmk -M 1048576; ipcmk -Q; ipcmk -S 1; ipcs\n",
}
IPC_PROBE = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
key = int('@TOKEN@'[-7:], 16)
print('FOUND' if libc.shmget(key, 0, 0) >= 0 or libc.msgget(key, 0) >= 0 else 'CLEAN')
"""
PLANT = r"""
@ATTEMPT@
T=@TOKEN@
for d in /tmp /dev/shm "$HOME" "$PWD" "$TMPDIR" /var/tmp /run /run/lock; do
  [ -d "$d" ] && echo "$T" > "$d/persist-$T" 2>/dev/null && echo "planted $d"
done
echo "echo $T-bashrc" >> "$HOME/.bashrc"
echo "echo $T-profile" >> "$HOME/.profile"
site="$HOME/.local/lib/python3.11/site-packages"
mkdir -p "$site" && echo "print('$T-usercustomize')" > "$site/usercustomize.py"
echo "print('$T-sitecustomize')" > /tmp/sitecustomize.py
echo "console.log('$T-node')" > "$PWD/jsboot.js"
"""
PROBE = r"""
import os
hits = []
for top in ('/tmp', '/dev/shm', os.environ.get('HOME') or '/', os.getcwd(), '/var/tmp', '/run'):
    for root, dirs, files in os.walk(top):
        if root.count('/') - top.count('/') >= 3:
            dirs[:] = []
        hits += [os.path.join(root, n) for n in dirs + files if '@TOKEN@' in n]
print('FOUND' if hits else 'CLEAN', hits[:10])
"""


def test_background_daemons(sec: Sec) -> None:
    """setsid, nohup, double-fork and signal-ignoring daemons die with their run: nothing is left."""
    for language in sec.languages(*DAEMONS):
        sec.run(DAEMONS[language], language, timeout_seconds=30)
        sec.expect(sec.elapsed[-1] < 20, f"{language}: the run waited {sec.elapsed[-1]:.0f} s")
    sec.finish()


def test_ipc_outlives_run(sec: Sec) -> None:
    """SysV shared memory, queues and semaphores of a run are gone with it (host and next run)."""
    made = []
    for language in sec.languages(*IPC):
        result = sec.run(IPC[language], language, timeout_seconds=30)
        made.append(bool(re.search(r"^(shmget [0-9]|Shared memory id: )", result["stdout"], re.M)))
    if sec.mode != "restricted":  # there ctypes and processes are refused: nothing is made
        sec.require(all(made), f"a run made no SysV object, the probe proves nothing: {made}")
        probe = sec.run(IPC_PROBE, "python", timeout_seconds=30, attempt=False)
        sec.expect(probe["stdout"].startswith("CLEAN"), "the next run found the last one's IPC")
    sec.finish()


def test_files_persist_between_runs(sec: Sec) -> None:
    """What one run writes anywhere (/tmp, /dev/shm, HOME, dotfiles, usercustomize) is gone for the next."""
    sec.only("docker-runc", "docker-runsc", "fast", "srt")
    plant = sec.run(PLANT, "bash", timeout_seconds=30)
    sec.require("planted" in plant["stdout"], f"nothing was planted: {plant['stderr'][-300:]!r}")
    probes = [
        sec.run(PROBE, "python", timeout_seconds=30, attempt=False),
        sec.run("echo probe", "bash", timeout_seconds=30, attempt=False),
        sec.run("console.log('probe')", "javascript", timeout_seconds=30, attempt=False),
    ]
    for probe in probes:
        seen = probe["stdout"] + probe["stderr"]
        sec.expect(sec.token not in seen, f"the next run saw the last one's files: {seen[:300]!r}")
        sec.expect(probe["stdout"].startswith(("CLEAN", "probe")), f"probe: {probe['stdout']!r}")
    sec.finish()


# Signals ignored, an exit hook and a finalizer that never return: the run must still end.
RUBY_EXIT_HOOKS = r"""
%w[TERM INT HUP QUIT USR1 USR2].each { |s| trap(s, 'IGNORE') }
@ATTEMPT@
at_exit { loop { begin; sleep 1; rescue Exception; end } }
ObjectSpace.define_finalizer('@TOKEN@'.dup, proc { sleep 300 })
puts 'armed'
"""


def test_ruby_exit_hooks_end_at_the_timeout(sec: Sec) -> None:
    """Ruby's at_exit, finalizers and ignored signals do not outlive the run's timeout."""
    sec.languages("ruby")
    result = sec.run(RUBY_EXIT_HOOKS, "ruby", timeout_seconds=3)
    categories = [v["category"] for v in result["violation_details"]]
    sec.expect("timeout" in categories, f"the run was not stopped at its timeout: {categories}")
    sec.expect(sec.elapsed[-1] < 15, f"the run waited {sec.elapsed[-1]:.0f} s")
    sec.finish()
