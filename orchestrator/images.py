"""Build the sandbox images from ``images/``, with progress, without a container registry.

Order: a Debian base (pulled when a registry answers, otherwise made with ``debootstrap`` and
``docker import``), then ``images/runner`` (compiles the runner once), then one image per
language. Each image is tagged with a hash of its definition (its folder's files and the hashes
of what it is built on) and with the settings' tag (``latest``); an image whose definition has
not changed is not rebuilt.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors

from orchestrator.backends.docker.errors import map_docker_errors, unavailable
from orchestrator.errors import ImageBuildError
from orchestrator.languages import LANGUAGES, get_language, images_dir
from orchestrator.settings import Settings

Progress = Callable[[str], None]
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEFINITION_LABEL = "org.athena.definition"


def definition_hash(directory: Path, *inputs: str) -> str:
    """Hash a build context's files (names and contents) and the hashes it builds on."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(item.encode() + b"\0")
    # Bytecode a host-side loader caches beside a boot file (the inprocess mode imports
    # pyboot.py) is not part of the definition: hashing it would rebuild the image for nothing.
    files = (p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(files):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class ImageBuilder:
    """Builds the base, runner and language images.

    Args:
        settings: image prefix and tag.
        progress: called with each line of progress (default: print).
        client: a docker-py client (default: from the environment).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        progress: Progress = print,
        client: docker.DockerClient | None = None,
    ) -> None:
        self._settings = settings or Settings()
        self._say = progress
        try:
            self._client = client or docker.from_env(timeout=600)
        except docker.errors.DockerException as exc:
            raise unavailable(exc) from exc
        self._api = self._client.api

    def build_all(
        self, languages: Iterable[str] | None = None, *, force: bool = False
    ) -> dict[str, str]:
        """Build what is missing or changed; return ``{language: image reference}``.

        Raises:
            ImageBuildError: debootstrap or a Docker build failed.
            BackendUnavailableError: no Docker engine answers.
        """
        names = (
            [get_language(n).name for n in languages]
            if languages
            else [lang.name for lang in LANGUAGES]
        )
        base = self.ensure_base()
        runner_hash = definition_hash(images_dir() / "runner", base)
        runner = self._build_once("runner", runner_hash, {"BASE_IMAGE": base}, force)
        built = {}
        for name in names:
            folder = get_language(name).image
            digest = definition_hash(images_dir() / folder, base, runner_hash)
            args = {"BASE_IMAGE": base, "RUNNER_IMAGE": runner}
            reference = self._build_once(folder, digest, args, force)
            latest = self._settings.image_ref(folder)
            repository, tag = latest.rsplit(":", 1)
            with map_docker_errors("tag the image"):
                self._api.tag(reference, repository, tag)
            built[name] = latest
            self._say(f"[images] {latest} -> {reference}")
        return built

    # ------------------------------------------------------------------ base

    def ensure_base(self) -> str:
        """Return the id of the Debian base image, making it when missing."""
        reference = f"{self._settings.image_prefix}/base:{DEBIAN_SUITE}"
        existing = self._image_id(reference)
        if existing:
            self._say(f"[images] base {reference} is present")
            return existing
        if self._pull_base(reference):
            return self._image_id(reference) or reference
        self._debootstrap_base(reference)
        return self._image_id(reference) or reference

    def _image_id(self, reference: str) -> str | None:
        try:
            image_id: str = self._api.inspect_image(reference)["Id"]
        except docker.errors.ImageNotFound:
            return None
        return image_id

    def _pull_base(self, reference: str) -> bool:
        self._say(f"[images] trying to pull debian:{DEBIAN_SUITE}-slim ...")
        try:
            self._api.pull("debian", tag=f"{DEBIAN_SUITE}-slim")
        except docker.errors.DockerException as exc:
            reason = str(exc).splitlines()[0][:120]
            self._say(f"[images] no registry answers ({reason}); using debootstrap")
            return False
        repository, tag = reference.rsplit(":", 1)
        self._api.tag(f"debian:{DEBIAN_SUITE}-slim", repository, tag)
        return True

    def _debootstrap_base(self, reference: str) -> None:
        if shutil.which("debootstrap") is None:
            raise ImageBuildError(
                "no Debian base image can be pulled and debootstrap is missing: "
                "run `apt-get install -y debootstrap` (as root) and try again"
            )
        with tempfile.TemporaryDirectory(prefix="athena-base-") as tmp:
            root = Path(tmp) / "rootfs"
            self._say(f"[images] debootstrap --variant=minbase {DEBIAN_SUITE} (about a minute) ...")
            command = ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR]
            self._stream_command(command, "debootstrap")
            for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
                leftover.unlink()
            archive = Path(tmp) / "rootfs.tar"
            self._stream_command(["tar", "-C", str(root), "-cf", str(archive), "."], "tar")
            self._say(f"[images] importing the root filesystem as {reference} ...")
            repository, tag = reference.rsplit(":", 1)
            with map_docker_errors("import the base image"):
                self._api.import_image_from_file(
                    str(archive),
                    repository=repository,
                    tag=tag,
                    changes=[f'LABEL org.athena.base="debootstrap {DEBIAN_SUITE} minbase"'],
                )

    def _stream_command(self, command: list[str], name: str) -> None:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(("I: Retrieving", "I: Validating")):
                    continue  # hundreds of lines per package; the rest tells the story
                self._say(f"[images] {name}: {line.rstrip()}")
        if process.returncode != 0:
            raise ImageBuildError(f"{name} failed with exit status {process.returncode}")

    # ------------------------------------------------------------------ builds

    def _build_once(self, folder: str, digest: str, buildargs: dict[str, str], force: bool) -> str:
        reference = f"{self._settings.image_prefix}/{folder}:{digest}"
        if not force and self._image_id(reference):
            self._say(f"[images] {reference} is up to date")
            return reference
        self._say(f"[images] building {reference} from images/{folder} ...")
        stream = self._api.build(
            path=str(images_dir() / folder),
            tag=reference,
            buildargs=buildargs,
            rm=True,
            forcerm=True,
            decode=True,
            labels={DEFINITION_LABEL: digest},
        )
        with map_docker_errors(f"build images/{folder}"):
            for chunk in stream:
                self._report(chunk, folder)
        self._prune(folder, keep=digest)
        return reference

    def _report(self, chunk: dict[str, Any], folder: str) -> None:
        if "error" in chunk:
            raise ImageBuildError(f"building images/{folder} failed: {chunk['error'].strip()}")
        text = str(chunk.get("stream", "")).rstrip()
        if text and not text.startswith(" ---> "):
            self._say(f"[images] {folder}: {text}")

    def _prune(self, folder: str, keep: str) -> None:
        """Remove older hash tags of an image so rebuilds do not pile up on disk."""
        repository = f"{self._settings.image_prefix}/{folder}"
        for image in self._api.images(name=repository):
            for tag in image.get("RepoTags") or []:
                suffix = tag.rsplit(":", 1)[1]
                if suffix not in {keep, self._settings.image_tag}:
                    # In use by a container right now: the next build prunes it.
                    with suppress(docker.errors.APIError):
                        self._api.remove_image(tag)
