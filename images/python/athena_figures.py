"""Figures a run leaves open, handed back as PNG files, as a notebook would display them.

The Python image's side of plot capture. pyboot calls, in this order:

- :func:`prepare` once, at interpreter start (before any request): makes matplotlib's
  config/cache directory (``MPLCONFIGDIR``, on the tmpfs) and copies into it the font list the
  image built, so that importing matplotlib neither warns that its directory is not writable
  nor rebuilds the list (which costs 0.1 s or more and runs ``fc-list``, a process strict
  policies refuse);
- :func:`configure` before each call: where ``plt.show()`` saves figures during that call
  (``None``: capture is off and ``plt.show()`` does nothing, as Agg's does);
- :func:`capture` after each call, when ``matplotlib.pyplot`` was imported: saves the figures
  still open and closes them.

Files are named ``figure-<n>.png``, ``n`` counting up over the interpreter's whole life, so a
session's later calls never reuse a name. The run's code has the same uid as this module and
may plant links: a directory or file is never reached through a link the code could have made
(see :func:`open_directory`), and files are created with ``O_EXCL | O_NOFOLLOW``. Nothing
here raises into its caller; what fails is one line on stderr.

This module imports nothing heavy: matplotlib only when a run already imported pyplot. The
backend itself (``MPLBACKEND=module://athena_figures_backend``) is a second module, because
pyplot reads a backend's attributes with ``vars()`` and they must exist when it is imported.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

# Every python run imports this module at start: no contextlib (collections, functools: 2 to
# 3 ms of each start) and no typing (milliseconds too); mypy reads TYPE_CHECKING as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_DIRECTORY",
    "RefusedPath",
    "capture",
    "configure",
    "open_directory",
    "prepare",
    "show",
]

DEFAULT_DIRECTORY = "/tmp/.athena/figures"
PREBUILT_ENV = "ATHENA_MPL_CACHE"  # where the image build left matplotlib's font list
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_TRIES = 100  # names taken by files the code planted are skipped, this many at most
# zlib level 1, not Pillow's 6: a line plot saves in about 5 ms less (of 40 to 50), its PNG
# about a quarter bigger (25 kB instead of 20 kB).
_PNG_OPTIONS = {"compress_level": 1}


class _State:
    directory: str | None = None  # where show() saves during the current call
    count = 0  # figures named so far in this interpreter


_state = _State()


class RefusedPath(OSError):
    """A directory that could have been planted by the run's code: not used."""


def prepare() -> None:
    """Make ``MPLCONFIGDIR`` and copy the image's prebuilt font list into it (under 1 ms).

    Does nothing when either ``MPLCONFIGDIR`` or ``ATHENA_MPL_CACHE`` is unset (outside the
    image). A failure is one line on stderr: matplotlib then works, only slower.
    """
    config = os.environ.get("MPLCONFIGDIR")
    prebuilt = os.environ.get(PREBUILT_ENV)
    if not config or not prebuilt:
        return
    try:
        directory = open_directory(config)
        try:
            for name in os.listdir(prebuilt):
                if name.startswith("fontlist-") and name.endswith(".json"):
                    _copy_into(os.path.join(prebuilt, name), directory, name)
        finally:
            os.close(directory)
    except Exception as exc:
        _say(f"matplotlib's cache directory {config} not prepared: {exc}")


def _copy_into(source: str, directory: int, name: str) -> None:
    # A copy, not a link: matplotlib rewrites the list in place if it ever rebuilds it, and
    # writing through a link into the read-only image would make that rebuild raise.
    with open(source, "rb") as handle:
        data = handle.read()
    try:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=directory)
    except FileExistsError:
        return  # prepared already
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def configure(directory: str | None) -> None:
    """Set where ``plt.show()`` saves figures during the current call; ``None`` turns it off.

    With capture off, ``plt.show()`` does nothing (as with Agg) and figures stay open.
    """
    _state.directory = directory


def show() -> None:
    """Save every open figure into the configured directory and close them (``plt.show()``).

    Does nothing when capture is off (see :func:`configure`). Runs inside the code: an
    interrupt (a call's timeout) still stops it; other failures are lines on stderr.
    """
    if _state.directory is None:
        return
    try:
        _capture(_state.directory, [0])
    except Exception as exc:
        _say(f"figures not shown: {type(exc).__name__}: {exc}")


def capture(directory: str) -> int:
    """Save every figure pyplot has open as ``directory/figure-<n>.png``, close them all.

    ``directory`` is made (mode 0700, parents too) when missing and refused when it, or a
    directory above it, is a link the code could have planted, or when another user owns it;
    the figures are closed unsaved then. Never raises, not even an interrupt that arrives
    meanwhile (the call has ended): each failure is a line on stderr.

    Returns:
        How many figures were saved.
    """
    saved = [0]  # counted as they are written: an interrupt still returns the right number
    try:
        _capture(directory, saved)
    except BaseException as exc:
        _say(f"figures not captured: {type(exc).__name__}: {exc}")
    return saved[0]


def _capture(directory: str, saved: list[int]) -> None:
    if "matplotlib.pyplot" not in sys.modules:
        return
    from matplotlib._pylab_helpers import Gcf

    managers = sorted(Gcf.get_all_fig_managers(), key=lambda m: m.num)
    if not managers:
        return
    try:
        folder = open_directory(directory)
    except OSError as exc:
        _say(f"{len(managers)} figure(s) not saved: {exc}")
        Gcf.destroy_all()
        return
    try:
        for manager in managers:
            try:
                _save(manager.canvas.figure, folder)
                saved[0] += 1
            except Exception as exc:
                _say(f"figure {manager.num} not saved: {type(exc).__name__}: {exc}")
            finally:
                Gcf.destroy(manager)
    finally:
        os.close(folder)
        Gcf.destroy_all()  # interrupted: the rest are closed unsaved, as a notebook would


def _save(figure: Figure, folder: int) -> None:
    for _ in range(_NAME_TRIES):
        _state.count += 1
        name = f"figure-{_state.count}.png"
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=folder)
        except FileExistsError:
            continue  # planted by the code, or left by an earlier interpreter: not ours
        try:
            with os.fdopen(fd, "wb") as handle:
                figure.savefig(handle, format="png", pil_kwargs=_PNG_OPTIONS)
        except BaseException:
            _remove(name, folder)  # no half-written PNG handed back
            raise
        return
    raise FileExistsError(f"{_NAME_TRIES} names up to figure-{_state.count}.png are taken")


def _remove(name: str, folder: int) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except OSError:  # the code removed it already
        pass


def open_directory(path: str) -> int:
    """Open the directory ``path`` as a file descriptor, making what is missing (mode 0700).

    Each part is opened relative to the one above without following links, except a link the
    run's code cannot have made: one another user owns, in a directory we cannot write (such as
    macOS's ``/var``). The directory itself must be ours.

    Raises:
        RefusedPath: a link the code could have planted is on the way, or another user owns
            the directory.
        OSError: a part is missing and cannot be made, or is not a directory.
    """
    fd = os.open("/", _DIRECTORY_FLAGS)
    try:
        for part in os.path.normpath(os.path.abspath(path)).split(os.sep):
            if part:
                child = _open_child(fd, part, path)
                os.close(fd)
                fd = child
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            raise RefusedPath(errno.EPERM, f"owned by uid {owner}, not by us", path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child(parent: int, name: str, path: str) -> int:
    try:
        return os.open(name, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except FileNotFoundError:
        # Made meanwhile: opened as whatever it is now, links refused as ever.
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        return os.open(name, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        # A link opened with O_NOFOLLOW | O_DIRECTORY: ENOTDIR on Linux, ELOOP elsewhere.
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISLNK(info.st_mode):
            raise
    if info.st_uid == os.geteuid() or os.access(".", os.W_OK, dir_fd=parent):
        raise RefusedPath(errno.ELOOP, f"{name!r} is a symbolic link (not followed)", path)
    return os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"athena_figures: {message}\n")
        sys.stderr.flush()
    except Exception:  # the code closed or replaced stderr: nothing else to tell
        pass
