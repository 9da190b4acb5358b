"""The egress allowlist on the real engine: a package index and web servers of our own.

The servers run in containers on the egress network and are pinned under allowed names
(pypi.org, github.com) and one name that is not allowed (evil.test) through the test-only
setting ``egress_pinned_hosts``. Nothing here leaves this machine.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker import egress
from orchestrator.settings import Settings

pytestmark = pytest.mark.docker

SERVER = textwrap.dedent(
    """
    import http.server, ssl, sys
    port = int(sys.argv[1])
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", port), http.server.SimpleHTTPRequestHandler)
    if port == 443:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain("/srv/cert.pem", "/srv/key.pem")
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()
    """
)


def _wheel(directory: Path) -> str:
    """Build a tiny pure-Python wheel, athena-probe 1.0; return its file name."""
    name = "athena_probe-1.0-py3-none-any.whl"
    files = {
        "athena_probe/__init__.py": "VALUE = 'installed through the egress proxy'\n",
        "athena_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: athena-probe\nVersion: 1.0\n",
        "athena_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_digest(text.encode())},{len(text)}" for path, text in files.items()]
    files["athena_probe-1.0.dist-info/RECORD"] = (
        "\n".join([*record, "athena_probe-1.0.dist-info/RECORD,,"]) + "\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    (directory / name).write_bytes(buffer.getvalue())
    return name


def _digest(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _site(tmp: Path) -> Path:
    site = tmp / "site"
    (site / "simple" / "athena-probe").mkdir(parents=True)
    wheel = _wheel(site / "simple" / "athena-probe")
    (site / "simple" / "athena-probe" / "index.html").write_text(f'<a href="{wheel}">{wheel}</a>\n')
    (site / "index.html").write_text("hello from a server of our own\n")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=pypi.org",
            "-keyout",
            str(site / "key.pem"),
            "-out",
            str(site / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    for path in site.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    site.chmod(0o755)
    return site


@pytest.fixture(scope="module")
def servers(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """An HTTPS index (as pypi.org) and an HTTP server (as github.com and evil.test)."""
    gateway = egress.ensure_network(docker_client.api)
    assert gateway
    site = _site(tmp_path_factory.mktemp("egress"))
    started = []
    try:
        for port in (443, 80):
            container = docker_client.containers.run(
                "athena-sandbox/python:latest",
                ["-c", SERVER, str(port)],
                entrypoint=["python3"],
                user="0:0",
                working_dir="/srv",
                network=egress.NETWORK,
                detach=True,
                remove=True,
                volumes={str(site): {"bind": "/srv", "mode": "ro"}},
                labels={"athena.test": "egress"},
            )
            started.append(container)
        addresses = []
        for container in started:
            container.reload()
            addresses.append(
                container.attrs["NetworkSettings"]["Networks"][egress.NETWORK]["IPAddress"]
            )
        yield {"pypi.org": addresses[0], "github.com": addresses[1], "evil.test": addresses[1]}
    finally:
        for container in started:
            container.remove(force=True)


@pytest.fixture(params=["cold", "warm"])
def research(
    request: pytest.FixtureRequest, servers: dict[str, str], tmp_path: Path, project_dir: Path
) -> Iterator[MemoryAPI]:
    """A MemoryAPI whose egress proxy resolves the test names to our servers."""
    warm = request.param == "warm"
    settings = Settings(
        project_dir=project_dir,
        egress_pinned_hosts=servers,
        pool_size=1 if warm else 0,
        pool_wait_seconds=60 if warm else 0,
    )
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        yield api


def _run(api: MemoryAPI, code: str, **kwargs: Any) -> dict[str, Any]:
    # validation off: the proxy and the network are judged here, not the validator
    kwargs.setdefault("sandbox_policy", {"extends": "research", "validation": {"enforce": False}})
    result = api.execute_code(code, timeout_seconds=60, **kwargs)
    assert result["sandbox_mode"] == "docker", result
    return result


def test_pip_install_user_works_through_the_proxy(research: MemoryAPI) -> None:
    """`pip install --user` from the (pinned) pypi.org succeeds and the package imports."""
    code = textwrap.dedent(
        """
        import subprocess, sys
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--no-cache-dir",
                               "--index-url", "https://pypi.org/simple/", "--trusted-host", "pypi.org",
                               "athena-probe"], capture_output=True, text=True)
        print(done.returncode, done.stderr[-300:])
        import site, importlib
        sys.path.insert(0, site.getusersitepackages())
        print(importlib.import_module("athena_probe").VALUE)
        """
    )
    policy = {"extends": "research", "validation": {"enforce": False}}
    r = research.execute_code(code, sandbox_policy=policy, timeout_seconds=120)
    assert r["success"], r["stdout"] + r["stderr"]
    assert r["stdout"].splitlines()[0].startswith("0")
    assert r["stdout"].splitlines()[-1] == "installed through the egress proxy"
    assert r["violations"] == []


def test_allowed_plain_http_is_proxied(research: MemoryAPI) -> None:
    """http://github.com/ (pinned to our server) answers through the proxy."""
    r = _run(
        research,
        "import urllib.request\nprint(urllib.request.urlopen('http://github.com/', timeout=10).read().decode())",
    )
    assert r["success"], r["stderr"]
    assert r["stdout"] == "hello from a server of our own\n\n"


def test_a_name_outside_the_allowlist_is_refused_and_reported(research: MemoryAPI) -> None:
    """evil.test is refused with 403 and the run carries a network violation naming it."""
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://evil.test/', timeout=10)\nexcept Exception as e:\n    print('refused', e)"
    r = _run(research, code)
    assert r["stdout"].startswith("refused HTTP Error 403")
    (violation,) = r["violation_details"]
    assert violation["category"] == "network" and violation["detail"]["domain"] == "evil.test"
    assert r["success"]  # a refused connection is reported, it does not fail the run by itself


def test_ip_literals_private_names_and_odd_ports_are_refused(research: MemoryAPI) -> None:
    """CONNECT to an IP, to a name resolving to loopback, or to a port not listed: all refused."""
    code = textwrap.dedent(
        """
        import socket, os
        host, port = os.environ["HTTPS_PROXY"].rsplit("/", 1)[1].split(":")
        for target in ("169.254.169.254:80", "localhost:443", "pypi.org:22"):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(f"CONNECT {target} HTTP/1.1\\r\\n\\r\\n".encode())
            print(target, s.recv(64).split(b"\\r\\n")[0].decode())
        """
    )
    policy = {
        "extends": "research",
        "network": {"allowed_domains": ["pypi.org", "localhost"]},
        "validation": {"enforce": False},
    }
    r = _run(research, code, sandbox_policy=policy)
    assert [line.split()[-2] for line in r["stdout"].splitlines()] == ["403", "403", "403"], r[
        "stdout"
    ]
    reasons = {v["detail"]["domain"]: v["detail"]["reason"] for v in r["violation_details"]}
    assert "IP addresses are not allowed" in reasons["169.254.169.254"]
    assert "private, loopback or link-local" in reasons["localhost"]
    assert "port 22 is not allowed" in reasons["pypi.org"]


def test_nothing_but_the_proxy_is_reachable(research: MemoryAPI, servers: dict[str, str]) -> None:
    """No DNS, no direct connection to other containers, no other port on the host."""
    code = textwrap.dedent(
        f"""
        import socket, os
        host, port = os.environ["HTTPS_PROXY"].rsplit("/", 1)[1].split(":")
        def attempt(target):
            try:
                socket.create_connection(target, timeout=3)
                return "connected"
            except OSError as e:
                return type(e).__name__
        try:
            socket.gethostbyname("pypi.org")
            print("dns resolved")
        except OSError:
            print("no dns")
        print("server", attempt(({servers["pypi.org"]!r}, 443)))
        print("host other port", attempt((host, 22)))
        print("proxy", attempt((host, int(port))))
        """
    )
    r = _run(research, code)
    dns, server, other, proxy = r["stdout"].splitlines()
    assert dns == "no dns" and proxy == "proxy connected"
    assert server != "server connected" and other != "host other port connected", r["stdout"]
