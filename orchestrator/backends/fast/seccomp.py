"""The fast mode's seccomp filter: an allowlist, compiled to BPF by libseccomp.

The rules are data (:data:`ALLOWED`, :data:`ARGUMENT_RULES`, :data:`ENOSYS`) with pure tests;
:func:`filter_bpf` hands them to libseccomp (through ``pyseccomp``) and returns the program
bubblewrap loads with ``--seccomp`` before it starts the runner. The runner adds its own
per-language filter on top (filters stack; the stricter answer wins).

How it compares with Docker's default profile, which the docker mode runs under:

- Everything not listed fails with EPERM, as there.
- Only the native architecture (x86-64): a 32-bit or x32 system call kills the process.
  Docker's profile also allows the i386 and x32 tables on amd64.
- Nothing that Docker's profile grants only with a capability (our sandboxes have none) is
  here: no mount family, ``unshare``, ``setns``, ``pivot_root``, ``chroot``, module loading,
  clock setting, ``bpf``, ``perf_event_open``, ``fanotify_init``, ``open_by_handle_at``,
  ``quotactl``, ``reboot``, ``swapon``, ``sethostname``, NUMA placement or ``iopl``.
- Also refused although Docker allows them on current kernels: ``ptrace``,
  ``process_vm_readv``/``writev``, ``kcmp``, ``pidfd_getfd``, the io_uring calls, ``keyctl``
  and its friends (Docker refuses those too), ``userfaultfd``, ``personality`` beyond the
  values Docker allows, ``socket`` beyond Unix, IPv4, IPv6 and netlink, and ``clone`` with any
  namespace flag (as Docker without CAP_SYS_ADMIN). ``clone3`` answers ENOSYS, as in Docker,
  so the C library falls back to ``clone``, whose flags a filter can see; so do the Linux AIO
  calls, whose contexts come from a host-wide budget one run could exhaust.
"""

from __future__ import annotations

import errno
import os
import tempfile
from functools import lru_cache
from typing import Any

# Ordinary system calls: files, memory, processes, signals, time, sockets, IPC, events.
ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "alarm", "arch_prctl", "bind", "brk", "capget", "chdir",
    "chmod", "chown", "clock_getres", "clock_gettime", "clock_nanosleep", "close",
    "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
    "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchownat", "fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstatfs", "fsync", "ftruncate", "futex",
    "futex_waitv", "get_robust_list", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "geteuid", "getgid", "getgroups", "getitimer", "getpeername", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresuid", "getrlimit",
    "getrusage", "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "ioctl", "ioprio_get", "ioprio_set", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "madvise", "membarrier", "memfd_create", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "pselect6", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "recvfrom", "recvmmsg", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl",
    "semget", "semop", "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto",
    "set_robust_list", "set_tid_address", "setfsgid", "setfsuid", "setgid", "setgroups",
    "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid",
    "setrlimit", "setsid", "setsockopt", "setuid", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "socketpair", "splice",
    "stat", "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime",
    "times", "tkill", "truncate", "umask", "uname", "unlink", "unlinkat", "utime",
    "utimensat", "utimes", "vfork", "vmsplice", "wait4", "waitid", "write", "writev",
)  # fmt: skip

# Flags that would make a new namespace: clone may not carry any of them.
_CLONE_NEW = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)
_SOCKET_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)  # Docker's list: query, PER_LINUX*

ARGUMENT_RULES: tuple[tuple[str, int, str, tuple[int, ...]], ...] = (
    ("clone", 0, "masked_eq", (_CLONE_NEW, 0)),
    *(("socket", 0, "eq", (family,)) for family in _SOCKET_FAMILIES),
    *(("personality", 0, "eq", (value,)) for value in _PERSONALITIES),
)
"""``(syscall, argument index, comparison, operands)``: each entry allows one case."""

# Linux AIO's contexts come from one host-wide budget (fs.aio-max-nr) that one run could hold
# whole; nothing our interpreters run needs it (libuv and Python use threads).
_AIO = ("io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit")
ENOSYS: tuple[str, ...] = ("clone3", *_AIO)
"""Answered "not implemented": callers fall back (glibc's clone3 to clone, which the filter
judges; AIO users to threads)."""


def filter_bpf() -> bytes:
    """The compiled filter (cached per process): BPF for bubblewrap's ``--seccomp``.

    Raises:
        OSError: libseccomp is missing or refused the rules.
    """
    return _compiled()


@lru_cache(maxsize=1)
def _compiled() -> bytes:
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, AttributeError) as exc:  # the library or libseccomp.so
        raise OSError(
            f"libseccomp is not usable ({exc}): `pip install pyseccomp` and "
            "`apt-get install libseccomp2`"
        ) from exc
    rules = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
    for name in ALLOWED:
        _add(rules, seccomp, seccomp.ALLOW, name)
    for name, index, op, operands in ARGUMENT_RULES:
        compare = {"eq": seccomp.EQ, "masked_eq": seccomp.MASKED_EQ}[op]
        _add(rules, seccomp, seccomp.ALLOW, name, seccomp.Arg(index, compare, *operands))
    for name in ENOSYS:
        _add(rules, seccomp, seccomp.ERRNO(errno.ENOSYS), name)
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def _add(rules: Any, seccomp: Any, action: int, name: str, *args: Any) -> None:
    """Add one rule; a call this kernel's table does not know is skipped (it cannot be made)."""
    try:
        seccomp.resolve_syscall(seccomp.system_arch(), name)
    except (ValueError, OSError):
        return
    rules.add_rule(action, name, *args)


def memfd_with(data: bytes) -> int:
    """A sealed-size in-memory file holding ``data``, at offset 0 (bubblewrap reads it once)."""
    fd = os.memfd_create("athena-seccomp", 0)  # inherited on purpose: bwrap reads it
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
