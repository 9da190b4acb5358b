"""Plot capture in the real Python image: matplotlib, its font list prebuilt, athena_figures.

Each test runs a script in a container as runs are started: read-only root, a tmpfs /tmp (so an
empty HOME), uid 65534, no network. The script prints one JSON line that the test judges.
"""

from __future__ import annotations

import base64
import json
import struct
import textwrap
from collections.abc import Callable
from typing import Any

import docker
import pytest

from orchestrator.guard import python_guard
from orchestrator.policy import load_policy

pytestmark = pytest.mark.docker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = "/tmp/.athena/figures"
# What pyboot does at interpreter start and around a call, as these tests need it.
PRELUDE = """\
import base64, json, os, sys, time
import athena_figures
athena_figures.prepare()
FIGURES = "/tmp/.athena/figures"
def listing(path=FIGURES):
    return sorted(os.listdir(path)) if os.path.isdir(path) else None
"""

Run = Callable[[str], "Outcome"]


class Outcome:
    """What a script run in the image printed: its JSON line (``result``) and its stderr."""

    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status = status
        self.stderr = stderr
        lines = stdout.strip().splitlines()
        assert status == 0 and lines, f"exit {status}\nstdout: {stdout}\nstderr: {stderr}"
        self.result: dict[str, Any] = json.loads(lines[-1])


@pytest.fixture
def run_python(docker_client: docker.DockerClient, sandbox_images: dict[str, str]) -> Run:
    """Run a script (after PRELUDE) with ``python3 -I`` in the Python image, as a run would."""

    def run(script: str) -> Outcome:
        container = docker_client.containers.create(
            sandbox_images["python"],
            entrypoint=["python3", "-I", "-c", PRELUDE + textwrap.dedent(script)],
            user="65534:65534",
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit="256m",
        )
        try:
            container.start()
            status = container.wait(timeout=120)["StatusCode"]
            stdout = container.logs(stdout=True, stderr=False).decode()
            stderr = container.logs(stdout=False, stderr=True).decode()
        finally:
            container.remove(force=True)
        return Outcome(status, stdout, stderr)

    return run


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header, which must be a PNG's."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_an_open_figure_is_captured_as_a_png(run_python: Run) -> None:
    """A figure left open is saved as figure-1.png (a PNG Pillow reads back) and closed."""
    outcome = run_python("""
        import matplotlib.pyplot as plt
        from PIL import Image
        plt.plot([1, 2, 3])
        saved = athena_figures.capture(FIGURES)
        path = os.path.join(FIGURES, "figure-1.png")
        with Image.open(path) as image:
            image.load()
            size = list(image.size)
        print(json.dumps({
            "saved": saved, "files": listing(), "open": plt.get_fignums(), "size": size,
            "backend": plt.get_backend(), "mode": oct(os.stat(FIGURES).st_mode & 0o777),
            "png": base64.b64encode(open(path, "rb").read()).decode(),
        }))
    """)
    result = outcome.result
    assert result["saved"] == 1
    assert result["files"] == ["figure-1.png"]
    assert result["open"] == []
    assert result["backend"] == "module://athena_figures_backend"
    assert result["mode"] == "0o700"
    assert list(png_size(base64.b64decode(result["png"]))) == result["size"] == [640, 480]
    assert outcome.stderr == ""  # no warning: the config/cache directory is writable


def test_show_saves_and_closes_and_names_keep_counting(run_python: Run) -> None:
    """plt.show() saves every open figure and closes them; later captures take the next names."""
    outcome = run_python("""
        import matplotlib.pyplot as plt
        athena_figures.configure(FIGURES)
        plt.figure(); plt.plot([1, 2])
        plt.figure(); plt.bar(["a", "b"], [3, 4])
        plt.show()
        after_show = {"files": listing(), "open": plt.get_fignums()}
        plt.plot([3, 2, 1])
        saved = athena_figures.capture(FIGURES)
        print(json.dumps({"show": after_show, "saved": saved, "files": listing()}))
    """)
    result = outcome.result
    assert result["show"] == {"files": ["figure-1.png", "figure-2.png"], "open": []}
    assert result["saved"] == 1
    assert result["files"] == ["figure-1.png", "figure-2.png", "figure-3.png"]
    assert outcome.stderr == ""


def test_show_with_capture_off_keeps_figures_open(run_python: Run) -> None:
    """configure(None): plt.show() saves nothing and the figure stays open, as with Agg."""
    outcome = run_python("""
        import matplotlib.pyplot as plt
        athena_figures.configure(None)
        plt.plot([1, 2, 3])
        plt.show()
        print(json.dumps({"files": listing(), "open": plt.get_fignums()}))
    """)
    assert outcome.result == {"files": None, "open": [1]}


def test_pandas_plot_is_captured(run_python: Run) -> None:
    """pandas imports, and a DataFrame's plot is captured like any pyplot figure."""
    outcome = run_python("""
        import pandas as pd
        pd.DataFrame({"x": [1, 2, 3], "y": [2, 4, 8]}).plot(x="x", y="y")
        print(json.dumps({"saved": athena_figures.capture(FIGURES), "files": listing()}))
    """)
    assert outcome.result == {"saved": 1, "files": ["figure-1.png"]}


def test_importing_and_plotting_runs_no_process_and_rebuilds_nothing(run_python: Run) -> None:
    """With the prebuilt font list, import, plot and capture start no process (no fc-list
    rebuild), warn nothing and leave the font list as it was; without it, the list is rebuilt."""
    outcome = run_python("""
        events = []
        def hook(event, args):
            if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork"):
                events.append(event)
        sys.addaudithook(hook)
        config = os.environ["MPLCONFIGDIR"]
        before = os.stat(os.path.join(config, "fontlist-v330.json")).st_mtime_ns
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3]); plt.title("text needs the fonts")
        saved = athena_figures.capture(FIGURES)
        after = os.stat(os.path.join(config, "fontlist-v330.json")).st_mtime_ns
        listed = sorted(os.listdir(config))
        # Without the prebuilt list, matplotlib rebuilds it: that runs fc-list, a process.
        import matplotlib.font_manager as fm
        os.remove(os.path.join(config, "fontlist-v330.json"))
        fm._load_fontmanager()
        print(json.dumps({"events": events, "saved": saved, "unchanged": before == after,
                          "config": listed}))
    """)
    result = outcome.result
    assert result["events"] == ["subprocess.Popen"]  # only the deliberate rebuild, at the end
    assert result["saved"] == 1
    assert result["unchanged"] is True
    assert result["config"] == ["fontlist-v330.json"]
    assert outcome.stderr == ""


def test_capture_under_the_strict_guard_is_refused_nothing(run_python: Run) -> None:
    """Code run under pyboot's strict guard plots and shows; the guard refuses nothing."""
    guard = json.dumps(python_guard(load_policy("strict")))
    outcome = run_python(f"""
        sys.path.insert(0, "/opt/athena")
        import pyboot
        report = os.open("/tmp/report", os.O_RDWR | os.O_CREAT, 0o600)
        pyboot.install_guard(json.loads({guard!r}), "/workspace", report)
        athena_figures.configure(FIGURES)
        code = "import matplotlib.pyplot as plt\\nplt.plot([1, 2]); plt.show(); plt.plot([2, 1])\\n"
        exec(compile(code, "/workspace/main.py", "exec"), {{"__name__": "__main__"}})
        saved = athena_figures.capture(FIGURES)
        print(json.dumps({{"saved": saved, "files": listing(),
                          "refusals": open("/tmp/report").read()}}))
    """)
    assert outcome.result == {
        "saved": 1,
        "files": ["figure-1.png", "figure-2.png"],
        "refusals": "",
    }


@pytest.mark.parametrize("planted", ["/tmp/.athena/figures", "/tmp/.athena"])
def test_a_link_planted_at_the_figures_dir_is_not_followed(run_python: Run, planted: str) -> None:
    """A link the code planted at the figures directory, or above it, is refused: nothing is
    written where it points, the figure is closed and one line says why."""
    outcome = run_python(f"""
        import shutil
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3])
        os.makedirs("/tmp/target")
        if {planted!r} == "/tmp/.athena":
            shutil.rmtree("/tmp/.athena")  # matplotlib's directory too: it is loaded already
        os.symlink("/tmp/target", {planted!r})
        saved = athena_figures.capture(FIGURES)
        print(json.dumps({{"saved": saved, "target": os.listdir("/tmp/target"),
                          "open": plt.get_fignums()}}))
    """)
    assert outcome.result == {"saved": 0, "target": [], "open": []}
    assert "symbolic link" in outcome.stderr
    assert len(outcome.stderr.splitlines()) == 1


def test_a_link_planted_at_a_figure_name_is_skipped(run_python: Run) -> None:
    """A link at figure-1.png is neither followed nor replaced: the figure becomes figure-2.png."""
    outcome = run_python("""
        os.makedirs(FIGURES, mode=0o700)
        os.symlink("/tmp/victim", os.path.join(FIGURES, "figure-1.png"))
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3])
        saved = athena_figures.capture(FIGURES)
        print(json.dumps({"saved": saved, "files": listing(),
                          "victim": os.path.lexists("/tmp/victim"),
                          "link": os.path.islink(os.path.join(FIGURES, "figure-1.png"))}))
    """)
    assert outcome.result == {
        "saved": 1,
        "files": ["figure-1.png", "figure-2.png"],
        "victim": False,
        "link": True,
    }


def test_a_directory_of_another_user_is_refused(run_python: Run) -> None:
    """/tmp is root's: capture there saves nothing and says so."""
    outcome = run_python("""
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3])
        print(json.dumps({"saved": athena_figures.capture("/tmp"), "open": plt.get_fignums(),
                          "pngs": [n for n in os.listdir("/tmp") if n.endswith(".png")]}))
    """)
    assert outcome.result == {"saved": 0, "open": [], "pngs": []}
    assert "owned by uid 0" in outcome.stderr


def test_a_figure_that_fails_to_save_is_skipped(run_python: Run) -> None:
    """A figure too big for Agg is one stderr line and no file; the next figure is still saved."""
    outcome = run_python("""
        import matplotlib.pyplot as plt
        plt.figure(figsize=(1000, 1000)); plt.plot([1, 2])
        plt.figure(); plt.plot([2, 1])
        saved = athena_figures.capture(FIGURES)
        print(json.dumps({"saved": saved, "files": listing(), "open": plt.get_fignums()}))
    """)
    assert outcome.result == {"saved": 1, "files": ["figure-2.png"], "open": []}
    assert outcome.stderr.count("\n") == 1
    assert "figure 1 not saved" in outcome.stderr


def test_time_of_capture_and_prepare(run_python: Run) -> None:
    """Prints the p50 of capturing one line plot in a fresh interpreter, and of prepare()
    (measured, not judged, apart from a loose bound on prepare: it runs at every start)."""
    outcome = run_python("""
        import statistics, subprocess
        one = (
            "import time, os; t = time.perf_counter()\\n"
            "import athena_figures; athena_figures.prepare()\\n"
            "prepare = time.perf_counter() - t\\n"
            "import matplotlib.pyplot as plt\\n"
            "plt.plot([1, 2, 3]); t = time.perf_counter()\\n"
            "athena_figures.capture('/tmp/f%d' % os.getpid())\\n"
            "print(prepare * 1000, (time.perf_counter() - t) * 1000)\\n"
        )
        pairs = [subprocess.run([sys.executable, "-I", "-c", one], capture_output=True,
                                text=True, check=True).stdout.split() for _ in range(9)]
        print(json.dumps({"prepare_ms": statistics.median(float(p[0]) for p in pairs),
                          "capture_ms": statistics.median(float(p[1]) for p in pairs)}))
    """)
    result = outcome.result
    print(f"\nprepare p50 {result['prepare_ms']:.2f} ms, capture p50 {result['capture_ms']:.1f} ms")
    assert result["prepare_ms"] < 20
