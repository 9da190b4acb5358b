"""Symlink tricks against the mounts and against what the orchestrator touches on the host.

The orchestrator copies nothing out of a container, and writes the code file before the code
runs, so the targets are: the research policy's read-only project mount (symlinks from inside,
``..``, ``/proc/self/root``, links the host itself left in the project), and in srt mode the
run's work directory on the host, which the orchestrator reads (``.athena-output.json``) and
removes after the run: neither may follow a link the code planted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.security.harness import Sec

pytestmark = pytest.mark.security

MIB = 1024 * 1024
HEAP_LIMIT = 48 * MIB

MOUNT_TRICKS = {
    "bash": r"""
@ATTEMPT@
T=@TOKEN@
P=/project; [ -d "$P" ] || P=@PROJECT@
ls -la "$P"
for f in "$P/escape-abs" "$P/escape-rel" "$P/escape-slash@WORLD@" "$P/escape-root" \
         "$P/../outside/world-readable-canary.txt" "$P/../../../outside/world-readable-canary.txt"; do
  echo "== $f"; head -c 4096 "$f" 2>&1
done
cd "$HOME" || cd /tmp
ln -s @WORLD@ l-world; ln -s @ROOTJSON@ l-root; ln -s /etc/shadow l-shadow; ln -s / l-slash
ln -s "$P/.." l-up
for f in l-world l-root l-shadow l-slash@WORLD@ l-up/../../outside/world-readable-canary.txt \
         /proc/self/root@WORLD@ /proc/1/root@WORLD@ /proc/self/cwd/../../..@WORLD@; do
  echo "== $f"; head -c 4096 "$f" 2>&1
done
cd "$P/.." && pwd && ls -la
touch "$P/$T"; ln -s /etc/shadow "$P/l-$T"; rm -f "$P/data.csv"; mv "$P/data.csv" "$P/moved-$T"
echo x >> "$P/data.csv"; chmod 777 "$P"; ln -sf /etc/shadow "$P/escape-abs"
echo done
""",
    "python": r"""
@ATTEMPT@
import os
T = '@TOKEN@'
P = '/project' if os.path.isdir('/project') else '@PROJECT@'
for name in ('escape-abs', 'escape-rel', 'escape-root'):
    path = os.path.join(P, name)
    print(name, os.path.realpath(path))
    try:
        print(open(path, 'rb').read(4096))
    except Exception as exc:
        print(repr(exc))
for target in ('@WORLD@', '@ROOTJSON@', '/etc/shadow', P + '/../outside/world-readable-canary.txt'):
    link = os.path.join(os.getcwd(), 'link-%d' % abs(hash(target)))
    try:
        os.symlink(target, link)
        print(link, open(link, 'rb').read(4096))
    except Exception as exc:
        print(target, repr(exc))
for path in (P + '/' + T, P + '/data.csv'):
    try:
        with open(path, 'a') as handle:
            handle.write('pwned')
    except Exception as exc:
        print(path, repr(exc))
""",
}
WORKDIR_LINKS = r"""
@ATTEMPT@
cd "$HOME"
V=@VICTIM@
ln -s "$V" victim-dir; ln -s "$V/victim.txt" victim-file; ln -s /etc/shadow shadow
ln -s /etc etc-dir; ln -s / slash; ln -s @WORLD@ world; ln -s @ROOTJSON@ root-canary
mkdir -p deep/er && ln -s "$V" deep/er/victim-dir && ln -s /etc deep/etc && chmod 000 deep
ln "$V/victim.txt" hard-victim; ln /etc/ld.so.cache hard-ldcache
rm -f main.sh .athena-params.json
ln -s "$V/victim.txt" main.sh; ln -s /etc/shadow .athena-params.json
mkdir sub && ln -s "$V" sub/.. 2>/dev/null
ls -la
"""
OUTPUT_LINK = '@ATTEMPT@\nln -s "@TARGET@" "$HOME/.athena-output.json"\nls -la "$HOME"\n'


def test_research_mount_symlinks(sec: Sec) -> None:
    """Under research, symlinks, `..` and /proc/self/root give no host file and never write the project."""
    sec.only("docker-runc", "docker-runsc", "srt")
    world = str(sec.host.world_canary)
    sec.plant_in_project("escape-abs", world)
    sec.plant_in_project("escape-rel", os.path.relpath(world, sec.project))
    sec.plant_in_project("escape-slash", "/")
    sec.plant_in_project("escape-root", str(sec.host.root_canary))
    for language in sec.languages("bash", "python"):
        sec.run(MOUNT_TRICKS[language], language, research=True, timeout_seconds=30)
    sec.finish()


def test_srt_workdir_cleanup(sec: Sec) -> None:
    """Removing an srt work dir full of links to host files and dirs deletes none of their targets."""
    sec.only("srt")
    victim = sec.workdir / "victim"
    victim.mkdir(mode=0o755)
    (victim / "victim.txt").write_text("victim\n")
    (victim / "victim.txt").chmod(0o644)
    before = _digest_tree(victim)
    sec.run(WORKDIR_LINKS, "bash", timeout_seconds=30, values={"@VICTIM@": str(victim)})
    sec.expect(_digest_tree(victim) == before, "a target of the run's links changed or vanished")
    sec.finish()


def test_srt_output_file_symlink(sec: Sec) -> None:
    """A `.athena-output.json` symlink to a root-only host file does not bring the file back."""
    sec.only("srt")
    result = sec.run(OUTPUT_LINK, "bash", values={"@TARGET@": str(sec.host.root_canary)})
    _require_link(sec, result)
    sec.finish()


def test_srt_output_file_huge(sec: Sec) -> None:
    """A `.athena-output.json` symlink to a 1 GiB host file leaves the orchestrator's memory flat."""
    sec.only("srt")
    huge = sec.workdir / "huge.json"
    with huge.open("wb") as handle:  # sparse: no disk is used
        handle.truncate(1024 * MIB)
    huge.chmod(0o600)
    with sec.measuring_memory() as memory:
        result = sec.run(OUTPUT_LINK, "bash", values={"@TARGET@": str(huge)})
    _require_link(sec, result)
    sec.notes.append(f"heap peak {memory['peak'] // MIB} MiB")
    sec.expect(memory["peak"] < HEAP_LIMIT, f"the orchestrator read {memory['peak'] // MIB} MiB")
    sec.finish()


def _require_link(sec: Sec, result: dict[str, Any]) -> None:
    """The case proves something only if the code did plant its output-file link."""
    sec.require(".athena-output.json ->" in result["stdout"], "the output-file link was not made")


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in [root, *root.rglob("*")]
    }
