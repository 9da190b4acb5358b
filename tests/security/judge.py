"""Host-state checks shared by the hostile cases and the corpus: what changed since ``begin``.

A :class:`HostCheck` snapshots the host before runs and lists, after them, every way the host
was affected: a listener reached, a secret in a result, a watched file or kernel setting changed
(each put back), a new file in a system directory, a decoy killed, the engine gone.
:func:`leftovers` lists what of the runs still exists on the host: processes, containers, work
directories.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from orchestrator.backends.docker.owners import LABEL_OWNER_PID, LABEL_RUN
from tests.security import hostenv
from tests.security.listeners import Listeners

_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
# Where the fast mode makes each sandbox's cgroup (``<owner pid>-<n>``, the sandbox id without
# its ``fast-`` prefix): v2, then the v1 controllers it uses.
FAST_CGROUPS = tuple(
    f"/sys/fs/cgroup/{c}athena-fast" for c in ("", "memory/", "pids/", "cpu/", "cpuacct/")
)
# Directories hostile code tries to create a file named after the run's token in.
SYSTEM_DIRS = (
    "/",
    "/usr",
    "/usr/local/bin",
    "/usr/lib",
    "/etc",
    "/etc/cron.d",
    "/root",
    "/var",
    "/var/tmp",
    "/opt",
    "/home",
    "/srv",
    "/lib",
    "/bin",
    "/tmp",
    "/dev/shm",
    "/run",
)


@dataclass
class HostCheck:
    """The host before some runs, and what the runs changed.

    Args:
        client: the Docker client (the engine must still answer).
        listeners: the session's listeners.
        decoys: the session's decoy processes.
        secrets: name -> secret value; none may appear in a result.
        token_dirs: directories in which no path containing ``token`` may appear.
    """

    client: docker.DockerClient
    listeners: Listeners
    decoys: hostenv.Decoys
    secrets: dict[str, str]
    token: str = ""
    token_dirs: Sequence[str] = SYSTEM_DIRS
    mark: float = 0.0
    files: dict[str, hostenv.FileState | None] = field(default_factory=dict)
    sysctls: dict[str, str | None] = field(default_factory=dict)
    ipc: set[tuple[str, str, str, int]] = field(default_factory=set)

    def begin(self) -> None:
        """Snapshot the host now."""
        self.mark = time.monotonic()
        self.files = {p: hostenv.file_state(p) for p in hostenv.WATCHED_FILES}
        self.sysctls = {p: hostenv.read_sysctl(p) for p in hostenv.WATCHED_SYSCTLS}
        self.ipc = hostenv.sysv_ipc_objects()
        self.decoys.dead()  # forget deaths from before

    def problems(self, results: Iterable[dict[str, Any]]) -> list[str]:
        """Everything the runs since :meth:`begin` did to the host (undone where possible)."""
        found = [
            f"{hit.proto} {hit.local} was reached from {hit.peer}: {hit.data!r}"
            for hit in self.listeners.hits_since(self.mark)
        ]
        dumped = json.dumps(list(results), default=str)
        found += [
            f"{name} came back in a result" for name, s in self.secrets.items() if s in dumped
        ]
        found += self._files_changed() + self._kernel_changed() + self._ipc_left()
        found += self.decoys.dead()
        try:
            self.client.ping()
        except (docker.errors.DockerException, OSError) as exc:
            found.append(f"the Docker engine no longer answers: {exc}")
        return found

    def _files_changed(self) -> list[str]:
        found = []
        for path, before in self.files.items():
            if hostenv.file_state(path) != before:
                found.append(f"host file {path} changed (restored)")
                hostenv.restore(path, before)
        found += [f"host path {p} exists" for p in hostenv.CORPUS_NEW_PATHS if os.path.lexists(p)]
        if self.token:
            for directory in self.token_dirs:
                for path in glob.glob(f"{glob.escape(directory)}/*{self.token}*"):
                    found.append(f"host path {path} was created (removed)")
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        return found

    def _ipc_left(self) -> list[str]:
        found = []
        for kind, key, ident, cuid in hostenv.sysv_ipc_objects() - self.ipc:
            if cuid in hostenv.SANDBOX_UIDS:
                found.append(
                    f"SysV {kind} {key} (uid {cuid}) outlived its run on the host (removed)"
                )
                hostenv.remove_sysv_ipc(kind, ident)
        return found

    def _kernel_changed(self) -> list[str]:
        found = []
        for path, before in self.sysctls.items():
            after = hostenv.read_sysctl(path)
            if after != before:
                found.append(f"kernel setting {path} changed to {after!r} (restored)")
                with contextlib.suppress(OSError):
                    Path(path).write_text(before or "")
        return found


def leftovers(
    client: docker.DockerClient,
    results: Sequence[dict[str, Any]],
    *,
    markers: Sequence[str] = (),
    workdirs: Path | None = None,
    any_container: bool = False,
    grace: float = 10.0,
) -> list[str]:
    """What of ``results``'s runs is still on the host after ``grace`` seconds.

    Looks for host processes whose argv, environment, cwd or cgroup mention a marker or a run's
    container id, the runs' containers (or, with ``any_container``, any container this process
    created), the fast-mode sandboxes' cgroups (or, with ``any_container``, any this process
    made), and entries left in ``workdirs`` (the srt and restricted work directories).
    """
    ids = [r["sandbox_id"] for r in results if _CONTAINER_ID.fullmatch(r.get("sandbox_id") or "")]
    cells = [
        str(r["sandbox_id"]).removeprefix("fast-")
        for r in results
        if str(r.get("sandbox_id") or "").startswith("fast-")
    ]
    if any_container:
        cells.append(f"{os.getpid()}-*")
    runs = {r["execution_id"] for r in results}
    deadline = time.monotonic() + grace
    while True:
        processes = hostenv.process_matches([*markers, *ids])
        cgroups = fast_cgroups(cells)
        ours = client.api.containers(
            all=True, filters={"label": f"{LABEL_OWNER_PID}={os.getpid()}"}
        )
        containers = [
            c
            for c in ours
            if any_container
            or (c.get("Labels") or {}).get(LABEL_RUN) in runs
            or any(c["Id"].startswith(i) for i in ids)
        ]
        left = list(workdirs.iterdir()) if workdirs is not None and workdirs.exists() else []
        if not (processes or containers or cgroups or left) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    found = [f"left running on the host: {p}" for p in processes[:5]]
    found += [f"container left: {c['Id'][:12]} ({c['Status']})" for c in containers]
    found += [f"fast-mode sandbox cgroup left: {c}" for c in cgroups[:5]]
    found += [f"work directory left on the host: {w}" for w in left[:5]]
    return found


def fast_cgroups(names: Sequence[str]) -> list[str]:
    """The fast-mode sandbox cgroups of ``names`` (globs) still on the host, each with the
    processes still in it (a sandbox's processes cannot leave its cgroup)."""
    found = []
    for name in names:
        for directory in sorted({d for base in FAST_CGROUPS for d in glob.glob(f"{base}/{name}")}):
            try:
                pids = Path(directory, "cgroup.procs").read_text().split()
            except OSError:
                continue  # removed meanwhile
            found.append(f"{directory} (processes: {' '.join(pids[:8]) or 'none'})")
    return found
