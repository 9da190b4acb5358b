"""The fast mode's export of images to the host, against a fake engine and a real tar."""

from __future__ import annotations

import io
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.fast.rootfs import RootfsStore

CONFIG = {
    "Entrypoint": ["/opt/athena/runner", "--"],
    "Cmd": ["python3", "-I"],
    "Env": ["PATH=/usr/bin", "A=b=c"],
    "WorkingDir": "/workspace",
}


def layer(text: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tmp = tarfile.TarInfo("var/tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
        files = (("etc/hostname", text.encode(), 0o644), ("bin/tool", b"#!/bin/sh\n", 0o755),
                 ("bin/su", b"\x7fELF", 0o4755), ("bin/wall", b"\x7fELF", 0o2755))  # fmt: skip
        for name, body, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), mode
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


class FakeApi:
    """The four engine calls an export makes; the image a reference names can be changed."""

    def __init__(self) -> None:
        self.image_id = "sha256:" + "1" * 64
        self.exports = 0
        self.removed: list[str] = []

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return {"Id": self.image_id if not ref.startswith("sha256:") else ref, "Config": CONFIG}

    def create_container(self, image: str, network_disabled: bool) -> dict[str, str]:
        assert network_disabled
        return {"Id": f"c-{image[-4:]}"}

    def export(self, container: str) -> list[bytes]:
        self.exports += 1
        data = layer(container)
        return [data[:100], data[100:]]

    def remove_container(self, container: str, force: bool) -> None:
        self.removed.append(container)


class FakeClient:
    def __init__(self) -> None:
        self.api = FakeApi()


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


def test_an_image_is_exported_once_and_read_back(tmp_path: Path, client: FakeClient) -> None:
    """The first use unpacks the image and its configuration; later uses find it unchanged."""
    store = RootfsStore(tmp_path / "fast", lambda: client)
    root = store.image_root("athena-sandbox/python:latest")
    assert (root.rootfs / "etc" / "hostname").read_text() == "c-1111"
    assert root.command == ("/opt/athena/runner", "--", "python3", "-I")
    assert root.environment == (("PATH", "/usr/bin"), ("A", "b=c"))
    assert client.api.removed == ["c-1111"]  # the container made for the export is gone
    again = RootfsStore(tmp_path / "fast", lambda: client).image_root(
        "athena-sandbox/python:latest"
    )
    assert (again, client.api.exports) == (root, 1)


def test_an_export_keeps_no_set_id_program_or_world_writable_directory(
    tmp_path: Path, client: FakeClient
) -> None:
    """On the host's disk, su keeps no set-uid bit and /var/tmp is nobody's to write."""
    root = RootfsStore(tmp_path / "fast", lambda: client).image_root("athena-sandbox/python:latest")
    assert stat.S_IMODE((root.rootfs / "bin" / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((root.rootfs / "bin" / "wall").stat().st_mode) == 0o755
    assert stat.S_IMODE((root.rootfs / "var" / "tmp").stat().st_mode) == 0o1775
    assert stat.S_IMODE((tmp_path / "fast").stat().st_mode) == 0o711


def test_an_export_made_before_hardening_is_made_again(tmp_path: Path, client: FakeClient) -> None:
    """An export whose configuration does not say it was hardened is not trusted: redone."""
    store = RootfsStore(tmp_path / "fast", lambda: client)
    config = store.image_root("athena-sandbox/python:latest").rootfs.parent / "image.json"
    config.write_text(config.read_text().replace('"hardened": true', '"hardened": false'))
    RootfsStore(tmp_path / "fast", lambda: client).image_root("athena-sandbox/python:latest")
    assert client.api.exports == 2


def test_a_rebuilt_image_replaces_its_export_keeping_the_one_before(
    tmp_path: Path, client: FakeClient
) -> None:
    """Exports of older builds go, but the newest of them stays for sandboxes still using it."""
    store = RootfsStore(tmp_path / "fast", lambda: client)
    made = []
    for digit in "123":
        client.api.image_id = "sha256:" + digit * 64
        made.append(store.image_root("athena-sandbox/python:latest").rootfs.parent)
        time.sleep(0.01)
    assert [folder.exists() for folder in made] == [False, True, True]


def test_a_half_done_export_of_a_dead_process_is_removed(
    tmp_path: Path, client: FakeClient
) -> None:
    """An unpack interrupted by its process's death is cleaned up by the next export."""
    (tmp_path / "fast" / "abc.partial-999999999" / "rootfs").mkdir(parents=True)
    RootfsStore(tmp_path / "fast", lambda: client).image_root("athena-sandbox/python:latest")
    assert not (tmp_path / "fast" / "abc.partial-999999999").exists()


def test_an_export_that_cannot_unpack_leaves_nothing(tmp_path: Path, client: FakeClient) -> None:
    """Garbage from the engine fails the export with tar's words, and nothing half made stays."""
    client.api.export = lambda container: [b"not a tar archive" * 100]  # type: ignore[method-assign]
    store = RootfsStore(tmp_path / "fast", lambda: client)
    with pytest.raises(OSError, match="unpacking the image failed"):
        store.image_root("athena-sandbox/python:latest")
    assert list((tmp_path / "fast").iterdir()) == []
