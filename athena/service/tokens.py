"""Bearer tokens, each naming a tenant: the token file and its verification.

The token file is JSON, mode 0600, and holds only a SHA-256 of each token (the token itself is
shown once, when ``add`` makes it)::

    {"version": 1, "tokens": [{"id": "tok_1a2b3c4d", "tenant": "team-a", "sha256": "<hex>",
      "policies": ["strict", "research"], "max_in_flight": 8, "created_at": "2026-..."}]}

Writers (``add``, ``revoke``) take an exclusive ``fcntl`` lock on ``<file>.lock``, read the
file, and replace it atomically (a temporary file in the same directory, then ``os.replace``),
so concurrent writers lose nothing and a reader never sees half a file. ``verify`` re-reads the
file whenever its (mtime_ns, ctime_ns, size, inode, mode, owner) or its directory's mode or
owner change, so a revocation (or a ``chmod``) takes effect on the next request without a
restart. A file that disappears, cannot be read or is malformed fails closed: nobody verifies
until it is fixed, and an error is logged once per problem; a failed read is tried again after
a second even if nothing changed (a transient error, e.g. no file descriptor left, must not
lock everyone out until the file is touched). Whatever the file holds, ``verify`` never raises.

The file is trusted only if nobody but its owner (this user or root) can change it: it must
be a regular file (not a symbolic link: ``add`` and ``revoke`` replace the path, which would
leave a link's target stale), owned by this user or root, not writable by group or others, in
a directory with the same properties (or a sticky one, like ``/tmp``).

Errors: a malformed or missing file raises :class:`TokenFileError` from ``list``, ``add`` and
``revoke`` (the message names the file and what to change); bad arguments raise
:class:`~orchestrator.errors.RequestError` (``PolicyNotFoundError`` for a policy name)::

    SandboxError
    └── TokenFileError (ValueError)     the token file is missing, unreadable or malformed
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import PolicyNotFoundError, RequestError, SandboxError
from orchestrator.models import DEFAULT_TENANT, check_tenant
from orchestrator.policy import shipped_policies_dir, shipped_policy_names

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_TENANT_POLICIES",
    "MAX_IN_FLIGHT_LIMIT",
    "TOKEN_PREFIX",
    "Tenant",
    "TokenFile",
    "TokenFileError",
    "TokenInfo",
    "local_tenant",
    "make_tenant",
]

log = structlog.get_logger(__name__)

DEFAULT_TENANT_POLICIES: tuple[str, ...] = ("strict", "research")
"""What a tenant may use unless its token says otherwise (``development`` mounts the project
read-write, so it is opt-in)."""
DEFAULT_MAX_IN_FLIGHT = 8
"""How many runs a tenant may have in flight unless its token says otherwise."""
MAX_IN_FLIGHT_LIMIT = 1024
"""The largest ``max_in_flight`` a token may carry."""

TOKEN_PREFIX = "ath_"
_MAX_TOKEN_CHARS = 512  # a presented token longer than this is not one of ours
_MAX_FILE_BYTES = 16 * 1024 * 1024  # larger token files are refused unread
_ID_PATTERN = r"^tok_[0-9a-f]{8}$"
_MAX_ERROR_LINES = 10
_RETRY_SECONDS = 1.0  # how soon a file that failed to load is tried again, changed or not


class TokenFileError(SandboxError, ValueError):
    """The token file is missing, unreadable or malformed; the message says what to change."""


@lru_cache(maxsize=4)
def _shipped_names_at(mtime_ns: int) -> tuple[str, ...]:
    del mtime_ns  # part of the cache key only: adding or removing a policy changes it
    return tuple(shipped_policy_names())


def _shipped_names() -> tuple[str, ...]:
    """The shipped policy names, listed again only when their directory changes.

    Each entry of a token file is checked twice on every reload: globbing the directory each
    time made a file of 20,000 tokens take seconds to load, blocking every request meanwhile.
    """
    try:
        mtime_ns = os.stat(shipped_policies_dir()).st_mtime_ns
    except OSError:
        return tuple(shipped_policy_names())
    return _shipped_names_at(mtime_ns)


def _check_policies(value: tuple[str, ...]) -> tuple[str, ...]:
    shipped = _shipped_names()
    if not value:
        raise ValueError(f"list at least one policy, e.g. {','.join(DEFAULT_TENANT_POLICIES)}")
    for name in value:
        if name not in shipped:
            shown = name if len(name) <= 60 and name.isprintable() else ascii(name[:60])
            raise PolicyNotFoundError(
                f"unknown policy {shown!r}: use shipped policy names ({', '.join(shipped)})"
            )
    if len(set(value)) != len(value):
        raise ValueError("each policy may appear once")
    return value


class Tenant(BaseModel):
    """Who a request acts for: its name, the policies it may use, its in-flight limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    policies: tuple[str, ...] = DEFAULT_TENANT_POLICIES
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, le=MAX_IN_FLIGHT_LIMIT)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_tenant(value)

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_policies(value)


class TokenInfo(BaseModel):
    """One token as ``list`` shows it: everything but the token and its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=_ID_PATTERN)
    tenant: str
    policies: tuple[str, ...]
    max_in_flight: int = Field(ge=1, le=MAX_IN_FLIGHT_LIMIT)
    created_at: datetime

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, value: str) -> str:
        return check_tenant(value)

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_policies(value)

    def to_tenant(self) -> Tenant:
        """Return the tenant this token acts for."""
        return Tenant(name=self.tenant, policies=self.policies, max_in_flight=self.max_in_flight)


class _Entry(TokenInfo):
    """A token as the file stores it: its info and the SHA-256 of the token."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    tokens: tuple[_Entry, ...]


def make_tenant(
    name: str,
    policies: Sequence[str] = DEFAULT_TENANT_POLICIES,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> Tenant:
    """Return a checked :class:`Tenant`.

    Raises:
        RequestError: the name is not a tenant name, ``policies`` is empty or repeats one, or
            ``max_in_flight`` is not 1..1024; the message says what to change.
        PolicyNotFoundError: a policy is not a shipped policy (the message names them).
    """
    if isinstance(policies, str):
        raise RequestError("policies must be a list of policy names, not one string")
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
        raise RequestError(f"max_in_flight must be an integer 1..{MAX_IN_FLIGHT_LIMIT}")
    if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:
        raise RequestError(f"max_in_flight must be 1..{MAX_IN_FLIGHT_LIMIT} (got {max_in_flight})")
    name = check_tenant(name)
    try:
        checked = _check_policies(tuple(policies))
    except PolicyNotFoundError:
        raise
    except ValueError as exc:
        raise RequestError(f"policies: {exc}") from exc
    return Tenant(name=name, policies=checked, max_in_flight=max_in_flight)


def local_tenant(
    policies: Sequence[str] = DEFAULT_TENANT_POLICIES,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> Tenant:
    """Return the tenant of no-token mode (the loopback server, MCP over stdio): ``default``.

    Raises:
        RequestError: as :func:`make_tenant`.
        PolicyNotFoundError: as :func:`make_tenant`.
    """
    return make_tenant(DEFAULT_TENANT, policies, max_in_flight)


def _digest(token: str) -> bytes:
    # A plain SHA-256, not a slow KDF: tokens are 256 bits from `secrets`, so nobody can guess
    # one from its hash however fast the hash is; a slow KDF guards low-entropy passwords and
    # would add milliseconds to every request. One hash per request, whatever the file holds.
    return hashlib.sha256(token.encode("ascii")).digest()


def _presented_digest(presented: object) -> bytes | None:
    """The digest of a presented token, or None when it cannot be one of ours.

    The checks look only at public facts (type, ASCII, length), so they leak no secret.
    """
    if not isinstance(presented, str) or not presented or len(presented) > _MAX_TOKEN_CHARS:
        return None
    if not presented.isascii():
        return None
    return _digest(presented)


_StatKey = tuple[int, ...]
_Verifier = tuple[tuple[bytes, Tenant], ...]


def _stat_key(info: os.stat_result, directory: os.stat_result) -> _StatKey:
    """What identifies one version of the file: content, inode, permissions, directory's too.

    ``ctime`` and the mode catch a ``chmod``/``chown`` (the content's mtime does not change).
    """
    return (
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_size,
        info.st_ino,
        info.st_dev,
        info.st_mode,
        info.st_uid,
        directory.st_mode,
        directory.st_uid,
    )


def _trusted_owner(uid: int) -> bool:
    return uid in {0, os.geteuid()}


class TokenFile:
    """The token file at ``path``: add, list, revoke and verify bearer tokens.

    Safe to share between threads; several processes may add and revoke at once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._reload = threading.Lock()
        # (stat key or problem, verifiers, when to try again regardless): swapped as one value
        # so readers need no lock.
        self._state: tuple[_StatKey | str | None, _Verifier, float] = (None, (), 0.0)
        self._logged: str | None = None  # the problem last logged (each is logged once)

    @property
    def path(self) -> Path:
        """The token file's path."""
        return self._path

    # ------------------------------------------------------------------ reading

    def list(self) -> list[TokenInfo]:
        """Return the tokens of the file (ids, tenants, policies; never a token or a hash).

        Raises:
            TokenFileError: the file does not exist, cannot be read or is malformed.
        """
        entries = self._read(missing_ok=False)
        return [TokenInfo.model_validate(_info_fields(entry)) for entry in entries]

    def verify(self, presented: object) -> Tenant | None:
        """Return the tenant of a presented token, or None (wrong, revoked, malformed).

        Hashes the token once and compares the hash with every entry in constant time, with
        no early exit. Re-reads the file first if it changed. A missing, unreadable or
        malformed file verifies nobody (fail closed; the problem is logged).
        """
        digest = _presented_digest(presented)
        verifiers = self._verifiers()
        if digest is None:
            return None
        found: Tenant | None = None
        for stored, tenant in verifiers:
            if hmac.compare_digest(digest, stored):
                found = tenant  # no break: every entry costs the same
        return found

    def _verifiers(self) -> _Verifier:
        key: _StatKey | str
        try:
            key = _stat_key(os.lstat(self._path), os.stat(self._path.parent))
        except OSError as exc:
            key = f"cannot be read: {exc.strerror}"
        except ValueError:  # a NUL in the path
            key = "cannot be read: the path contains a NUL character"
        current_key, verifiers, retry_at = self._state
        if key == current_key and time.monotonic() < retry_at:
            return verifiers
        with self._reload:
            current_key, verifiers, retry_at = self._state
            if key != current_key or time.monotonic() >= retry_at:
                self._state = self._load(key)
            return self._state[1]

    def _load(self, key: _StatKey | str) -> tuple[_StatKey | str, _Verifier, float]:
        """Read the file; on any problem, log it once and verify nobody for a while."""
        failed = key, (), time.monotonic() + _RETRY_SECONDS
        if isinstance(key, str):
            self._log_problem(f"{self._path} {key}")
            return failed
        try:
            entries, read_key = self._read_entries()
            verifiers = tuple((bytes.fromhex(e.sha256), e.to_tenant()) for e in entries)
        except TokenFileError as exc:
            self._log_problem(str(exc))
            return failed
        except Exception as exc:  # the last net: verify is on every request
            self._log_problem(f"token file {self._path}: cannot be used: {type(exc).__name__}")
            return failed
        self._logged = None
        log.info("token file loaded", path=str(self._path), tokens=len(verifiers))
        return read_key, verifiers, float("inf")

    def _log_problem(self, problem: str) -> None:
        if problem == self._logged:
            return
        self._logged = problem
        log.error(
            "token file unusable: no token verifies until it is fixed",
            path=str(self._path),
            problem=problem,
        )

    def _read(self, *, missing_ok: bool) -> tuple[_Entry, ...]:
        try:
            return self._read_entries()[0]
        except TokenFileError as exc:
            if missing_ok and isinstance(exc.__cause__, FileNotFoundError):
                return ()
            raise

    def _read_entries(self) -> tuple[tuple[_Entry, ...], _StatKey]:
        """Read and check the file; return its entries and the stat key of what was read.

        Raises:
            TokenFileError: the file is missing, unreadable, too large, writable by others,
                not JSON or not a token file.
        """
        data, key = self._read_bytes()
        try:
            raw = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, JSON, huge ints
            where = (
                f" (line {exc.lineno})"
                if isinstance(exc, json.JSONDecodeError)
                else " (not UTF-8, nested too deeply or a number too long)"
            )
            raise self._error(
                f"not valid JSON{where}; restore it from a backup, or move it away and "
                "create tokens again with `athena-sandbox tokens add`"
            ) from exc
        try:
            document = _Document.model_validate(raw)
        except ValidationError as exc:
            raise self._error(_validation_message(exc)) from exc
        self._check_unique(document.tokens)
        return document.tokens, key

    def _read_bytes(self) -> tuple[bytes, _StatKey]:
        """Read the file if only its owner can change it; return its bytes and stat key.

        Raises:
            TokenFileError: the file or its directory is missing, unreadable, a link, not a
                regular file, too large, or others may change it.
        """
        directory = self._checked_directory()
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise self._error(
                "does not exist; create it with "
                f"`athena-sandbox tokens add TENANT --file {self._path}`"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._error(
                    "is a symbolic link; name the file itself (writes replace the path, which "
                    "would leave the link's target stale)"
                ) from exc
            raise self._error(f"cannot be read: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            self._check_file(info)
            data = _read_at_most(fd, _MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(data) > _MAX_FILE_BYTES:
            raise self._error(f"is larger than {_MAX_FILE_BYTES // (1024 * 1024)} MiB")
        return data, _stat_key(info, directory)

    def _check_file(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise self._error("is not a regular file")
        if not _trusted_owner(info.st_uid):
            raise self._error(
                f"is owned by uid {info.st_uid}, who could add tokens: "
                f"`chown {os.geteuid()} {self._path}`"
            )
        if info.st_mode & 0o022:
            raise self._error(f"is writable by other users: run `chmod 600 {self._path}`")

    def _checked_directory(self) -> os.stat_result:
        """Stat the file's directory, refusing one where others could replace the file.

        Raises:
            TokenFileError: the directory cannot be looked at, belongs to another user, or
                others may write in it and it is not sticky.
        """
        directory = self._path.parent
        self._check_path()
        try:
            info = os.stat(directory)
        except OSError as exc:
            raise self._error(f"its directory {directory} cannot be read: {exc.strerror}") from exc
        if not _trusted_owner(info.st_uid):
            raise self._error(
                f"its directory {directory} is owned by uid {info.st_uid}, who could replace "
                "the file; keep the token file in a directory of this user or root"
            )
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise self._error(
                f"its directory {directory} is writable by other users, who could replace the "
                f"file: run `chmod go-w {directory}`"
            )
        return info

    def _check_path(self) -> None:
        if "\x00" in str(self._path):  # os calls would raise a bare ValueError
            raise self._error("the path contains a NUL character")

    def _error(self, problem: str) -> TokenFileError:
        return TokenFileError(f"token file {self._path}: {problem}")

    def _check_unique(self, entries: tuple[_Entry, ...]) -> None:
        ids: set[str] = set()
        hashes: set[str] = set()
        for index, entry in enumerate(entries):
            if entry.id in ids:
                raise self._error(
                    f"tokens.{index}.id: {entry.id} appears twice; remove one of the entries"
                )
            if entry.sha256 in hashes:
                raise self._error(
                    f"tokens.{index}.sha256: the same token appears twice; remove one entry"
                )
            ids.add(entry.id)
            hashes.add(entry.sha256)

    # ------------------------------------------------------------------ writing

    def add(
        self,
        tenant: str,
        policies: Sequence[str] = DEFAULT_TENANT_POLICIES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> tuple[TokenInfo, str]:
        """Create a token for ``tenant``; return its info and the token (shown only now).

        Creates the file (mode 0600) if it does not exist.

        Raises:
            RequestError: the tenant name, the policies or ``max_in_flight`` are invalid.
            PolicyNotFoundError: a policy is not a shipped policy.
            TokenFileError: the file is malformed or cannot be written.
        """
        checked = make_tenant(tenant, policies, max_in_flight)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            entries = self._read(missing_ok=True)
            ids = {entry.id for entry in entries}
            token_id = _new_id(ids)
            entry = _Entry(
                id=token_id,
                tenant=checked.name,
                policies=checked.policies,
                max_in_flight=checked.max_in_flight,
                created_at=datetime.now(UTC).replace(microsecond=0),
                sha256=_digest(token).hex(),
            )
            self._write((*entries, entry))
        return TokenInfo.model_validate(_info_fields(entry)), token

    def revoke(self, token_id: str) -> bool:
        """Remove the token with this id; return whether there was one.

        Servers reading the file stop accepting the token on their next request.

        Raises:
            TokenFileError: the file does not exist, is malformed or cannot be written.
        """
        with self._locked():
            entries = self._read(missing_ok=False)
            kept = tuple(entry for entry in entries if entry.id != token_id)
            if len(kept) == len(entries):
                return False
            self._write(kept)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._check_path()
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise self._error(
                    f"its directory {self._path.parent} does not exist; create it first"
                ) from exc
            raise self._error(f"cannot lock {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, entries: tuple[_Entry, ...]) -> None:
        document = {
            "version": 1,
            "tokens": [entry.model_dump(mode="json") for entry in entries],
        }
        text = json.dumps(document, indent=2) + "\n"
        directory = self._path.parent
        try:
            fd, temporary = tempfile.mkstemp(
                prefix=f".{self._path.name}.", suffix=".tmp", dir=directory
            )  # mkstemp creates the file with mode 0600
        except OSError as exc:
            raise self._error(f"cannot write in {directory}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise self._error(f"cannot be written: {exc.strerror}") from exc
        _fsync_directory(directory)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Read up to ``limit`` bytes from ``fd`` (to its end if it is shorter)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(fd, min(1024 * 1024, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _info_fields(entry: _Entry) -> dict[str, Any]:
    return entry.model_dump(exclude={"sha256"})


def _new_id(taken: set[str]) -> str:
    while True:
        token_id = "tok_" + secrets.token_hex(4)
        if token_id not in taken:
            return token_id


def _validation_message(exc: ValidationError) -> str:
    errors = exc.errors()
    lines = ["not a token file (fix these fields, or revoke the entry and add a new token):"]
    for err in errors[:_MAX_ERROR_LINES]:
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = "unknown key: remove it"
        elif err["type"] == "literal_error" and err["loc"] == ("version",):
            message = "must be 1 (this version reads version 1 only)"
        else:
            message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}")
    if len(errors) > _MAX_ERROR_LINES:
        lines.append(f"  and {len(errors) - _MAX_ERROR_LINES} more")
    return "\n".join(lines)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: fsync the directory (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
