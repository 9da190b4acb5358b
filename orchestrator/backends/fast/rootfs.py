"""The images' root filesystems on the host, exported once per image for the fast mode.

A language image (``athena-sandbox/python:latest``) is exported once (``docker create`` then
``docker export``, unpacked by ``tar``) into ``<fast_root>/<image id>/rootfs``, with the image's
configuration beside it (``image.json``: entrypoint, command, environment, working directory).
Every fast-mode sandbox binds that directory read-only as its ``/``. The directory appears
complete or not at all (unpacked under a temporary name, then renamed), and exports of older
builds of the same image reference are removed once a newer one is in place. Only our own
images are exported: custom images run in the docker mode.

An export sits on the host's disk, where Docker's layers are under root-only
``/var/lib/docker``: so no file of it keeps a set-uid or set-gid bit (``su``, ``mount``,
``passwd``... would otherwise be there for any local user to run, outside every sandbox) and no
directory stays writable by others (``/var/tmp``, ``/run/lock``: planted files would show in
every sandbox). Inside a sandbox neither matters (no new privileges; the root is read-only).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from orchestrator.backends.hostlimits import pid_alive

log = structlog.get_logger(__name__)

_CONFIG = "image.json"
_EXPORT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ImageRoot:
    """One exported image: its root filesystem and what its configuration says to run.

    Attributes:
        image_id: the engine's image id (``sha256:...``).
        reference: the reference it was exported for (``athena-sandbox/python:latest``).
        rootfs: the unpacked root filesystem (read-only for sandboxes).
        command: the entrypoint followed by the command (the runner, then the interpreter).
        environment: the image's environment variables.
        workdir: the image's working directory.
    """

    image_id: str
    reference: str
    rootfs: Path
    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    workdir: str

    @classmethod
    def from_config(cls, directory: Path, data: Mapping[str, Any]) -> ImageRoot:
        """Read an export's ``image.json`` (as :meth:`RootfsStore.export` writes it)."""
        config = data["config"]
        env = tuple(tuple(item.split("=", 1)) for item in config.get("Env") or () if "=" in item)
        return cls(
            image_id=data["id"],
            reference=data["reference"],
            rootfs=directory / "rootfs",
            command=(*(config.get("Entrypoint") or ()), *(config.get("Cmd") or ())),
            environment=env,  # pairs, split once
            workdir=config.get("WorkingDir") or "/",
        )


class RootfsStore:
    """Exports images to ``root`` on first use and finds them again.

    Args:
        root: the directory holding one folder per exported image.
        client_factory: makes a docker-py client (called only when an export or an image
            lookup is needed).
    """

    def __init__(self, root: Path, client_factory: Any) -> None:
        self.root = root
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self._by_reference: dict[str, ImageRoot] = {}

    def image_root(self, reference: str) -> ImageRoot:
        """The exported root of the image ``reference`` names now (exported if new).

        Raises:
            OSError: the engine cannot be asked, the image is missing, or the export failed.
        """
        with self._lock:
            image_id = self._image_id(reference)
            known = self._by_reference.get(reference)
            if known is not None and known.image_id == image_id:
                return known
            found = self._load(image_id) or self._export(reference, image_id)
            self._by_reference[reference] = found
            self._prune(reference, keep=image_id)
            return found

    def cached(self, reference: str) -> ImageRoot | None:
        """The export last used for ``reference`` in this process, without asking the engine."""
        return self._by_reference.get(reference)

    def forget(self) -> None:
        """Ask the engine again at the next use (the image may have been rebuilt)."""
        with self._lock:
            self._by_reference.clear()

    def _docker(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _image_id(self, reference: str) -> str:
        try:
            return str(self._docker().api.inspect_image(reference)["Id"])
        except Exception as exc:  # docker-py and requests errors alike: the caller says why
            raise OSError(f"cannot look up image {reference}: {exc}") from exc

    def _folder(self, image_id: str) -> Path:
        return self.root / image_id.removeprefix("sha256:")[:24]

    def _load(self, image_id: str) -> ImageRoot | None:
        folder = self._folder(image_id)
        try:
            data = json.loads((folder / _CONFIG).read_text())
        except (OSError, ValueError):
            return None
        if (
            data.get("id") != image_id
            or not data.get("hardened")
            or not (folder / "rootfs").is_dir()
        ):
            return None  # another image, or an export made before exports were hardened
        return ImageRoot.from_config(folder, data)

    def _export(self, reference: str, image_id: str) -> ImageRoot:
        """Unpack the image into a temporary folder, then rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # sandboxes run as other uids: they must pass, not list
        folder = self._folder(image_id)
        staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "rootfs").mkdir(parents=True)
        log.info("exporting an image's root filesystem for the fast mode", image=reference)
        api = self._docker().api
        inspected = api.inspect_image(image_id)
        container = api.create_container(image_id, network_disabled=True)["Id"]
        try:
            self._unpack(api.export(container), staging / "rootfs")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            with suppress(Exception):
                api.remove_container(container, force=True)
        _harden(staging / "rootfs")
        data = {
            "id": image_id,
            "reference": reference,
            "config": inspected.get("Config") or {},
            "hardened": True,
        }
        (staging / _CONFIG).write_text(json.dumps(data))
        (staging / "rootfs").chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        return ImageRoot.from_config(folder, data)

    @staticmethod
    def _unpack(chunks: Any, target: Path) -> None:
        """Stream the engine's export into ``tar``: owners, modes and links as in the image."""
        tar = subprocess.Popen(
            ["tar", "-x", "--numeric-owner", "--same-permissions", "-C", str(target), "-f", "-"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert tar.stdin is not None and tar.stderr is not None
        try:
            for chunk in chunks:
                tar.stdin.write(chunk)
            tar.stdin.close()
            err = tar.stderr.read()
            tar.wait(timeout=_EXPORT_TIMEOUT_S)
        except BaseException:
            tar.kill()
            tar.wait()
            raise
        if tar.returncode != 0:
            raise OSError(f"unpacking the image failed: {err.decode(errors='replace')[-500:]}")

    def _prune(self, reference: str, keep: str) -> None:
        """Remove older exports of ``reference`` and unpacks a dead process left half done.

        The newest export before ``keep`` stays too: sandboxes started from it (a warm pool,
        runs in flight) may still be using it when the image has just been rebuilt.
        """
        older: list[tuple[float, Path]] = []
        with suppress(OSError):
            for folder in self.root.iterdir():
                if ".partial-" in folder.name:
                    owner = folder.name.rpartition("-")[2]
                    if owner.isdigit() and not pid_alive(int(owner)):
                        shutil.rmtree(folder, ignore_errors=True)
                    continue
                if folder == self._folder(keep):
                    continue
                with suppress(OSError, ValueError, KeyError):
                    if json.loads((folder / _CONFIG).read_text())["reference"] == reference:
                        older.append(((folder / _CONFIG).stat().st_mtime, folder))
        for _, folder in sorted(older)[:-1]:
            shutil.rmtree(folder, ignore_errors=True)


def _harden(rootfs: Path) -> None:
    """Clear set-uid and set-gid bits and other-writable directories in an unpacked image."""
    for directory, _dirs, files in os.walk(rootfs):  # links are never followed
        info = os.lstat(directory)
        if info.st_mode & 0o002:
            os.chmod(directory, stat.S_IMODE(info.st_mode) & ~0o002)
        for name in files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o6000:
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o6000)
