/*
 * athena-runner: the main process (PID 1) of every athena-sandbox container.
 *
 * It starts the language's interpreter at once (so a warm container has it loaded), then waits
 * for a request on stdin, hands the code and the parameters to the interpreter, and reports
 * what happens as length-framed messages on stdout. The orchestrator is the only reader of
 * stdout; the user's code writes into pipes that this process owns, so it cannot forge frames.
 *
 * Request (stdin), once per call:
 *     "ATHENA/3 <code_len> <blob_len> <install_len> <files_len> <timeout_ms> <max_output_bytes>
 *      <files_cap> <flags> <nonce>\n" <code> <blob> <install> <files>
 *   flags: 1 = send back the figures the bootstrap saved. <install>: a command line
 *   (NUL-separated) this process runs before the code gets its parameters (npm for a
 *   JavaScript run's requirements; see run_install).
 *   The nonce (hex, fresh for each call) comes back in the exit frame and first in every
 *   failure and file frame once it is known: under gVisor the code can open this process's
 *   stdout through /proc/1/fd (runsc does not honour PR_SET_DUMPABLE for it) and write frames
 *   of its own, but it cannot read the nonce from our memory, so the orchestrator tells our
 *   reports from forged ones.
 *   The code is written to --code-file; the blob (parameters, in the form the language's
 *   bootstrap expects) is written to the interpreter's fd 3. <files> is a sequence of
 *   "<name_len> <size>\n" <name> <data>: each is written under the workspace before the code
 *   starts, never through a link. After the request, stdin stays open: EOF means the owner
 *   died, and everything is killed at once.
 *
 * One-shot (the default): one request, then everything is killed and this process exits.
 * Session (ATHENA_SESSION=1 in the environment): requests follow each other, the interpreter
 *   and its state stay. The blob goes to fd 3 as "<blob_len>\n" <blob>; the bootstrap writes
 *   "<status>\n" to fd 5 when the call's code is done. At the timeout the interpreter gets
 *   SIGINT (Python: KeyboardInterrupt, like a notebook cell); if it does not report done within
 *   a second, everything is killed and the session is over ("alive": false in the exit frame).
 *   cgroup counters in a session's exit frame are the call's own (differences); a memory or
 *   process limit hit between calls, or the interpreter gone, is reported at the next request
 *   (which then does not run) and ends the session. A session's first request carries a key in
 *   its nonce field, later ones their number: the nonces are derived from the key (see
 *   derive_nonce), never sent once the code can read what arrives here.
 *
 * Frames (stdout): 1 type byte, 4-byte big-endian length, payload.
 *   'R' ready           the interpreter is starting; the container can take a request
 *   'B' begin           the code has been handed over; the run's clock starts
 *   'o' / 'e'           stdout / stderr bytes of the code
 *   'c' cut             "<o|e> <bytes>": that many bytes of the stream were dropped here
 *   'v' value           bytes the interpreter wrote on fd 4 (Python's `output`, as JSON)
 *   'F' file            "<nonce> <kind> <name in hex> <size>": kind f (a file of
 *                       /workspace/out, its bytes follow in 'D' frames), a (a figure the
 *                       bootstrap saved, likewise), s (skipped: a link or not a regular file),
 *                       o (over the files cap: not sent). In a session only files whose status
 *                       changed during the call come back; figures are removed once sent.
 *   'D' data            the next bytes of the last 'F' file
 *   'E' input error     "<nonce> message": the request's files could not be written; the code
 *                       did not run (a session waits for the next request)
 *   'x' exit            JSON status: exit code or signal, timeout, cgroup figures, session state
 *   'f' failure         the runner could not do its job ("<nonce> message" once the request
 *                       is read, "message" before)
 *
 * Output caps: each stream is forwarded live up to max_output bytes; after that only the last
 * max_output/2 bytes are kept and sent at the end after a 'c' frame, so whatever the code prints,
 * the orchestrator receives a bounded amount.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/audit.h>
#include <sched.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL "ATHENA/3"
#define NONCE_MAX 64
#define CHUNK 65536
#define DRAIN_NS (2LL * 1000000000LL)
#define MOUNT_CHECK_MS 100 /* how often writes to writable mounts are measured */
#define INTERRUPT_GRACE_NS (1LL * 1000000000LL) /* a session call's time to stop after SIGINT */
#define FIGURES_DIR "/tmp/.athena/figures"   /* where the Python bootstrap saves open figures */
#define FLAG_FIGURES 1ULL                      /* request flag: send the figures back */

typedef struct {
    int fd;            /* read end, -1 once closed */
    char tag;          /* 'o' or 'e' */
    uint64_t total;    /* bytes read from the pipe */
    uint64_t live;     /* bytes forwarded as they came */
    uint64_t dropped;  /* bytes dropped between the live part and the tail */
    char *ring;        /* the last bytes past the live part */
    size_t ring_cap, ring_start, ring_len;
} stream_t;

static pid_t child_pid = -1;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            _exit(3); /* the orchestrator is gone: nothing left to report to */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void send_frame(char type, const void *payload, size_t len) {
    unsigned char head[5];
    head[0] = (unsigned char)type;
    head[1] = (unsigned char)(len >> 24);
    head[2] = (unsigned char)(len >> 16);
    head[3] = (unsigned char)(len >> 8);
    head[4] = (unsigned char)len;
    write_all(STDOUT_FILENO, head, sizeof head);
    if (len) write_all(STDOUT_FILENO, payload, len);
}

static void send_framef(char type, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
    send_frame(type, buf, (size_t)n);
}

/* Kill every process of the run. As PID 1 of the container's PID namespace, kill(-1) reaches
 * all of them (daemons that left the process group included) and never this process. */
static void kill_run(void) {
    if (getpid() == 1) {
        kill(-1, SIGKILL);
    } else if (child_pid > 0) {
        kill(-child_pid, SIGKILL);
    }
}

static char run_nonce[NONCE_MAX + 1]; /* empty until the request header is read */

static void fail(const char *what) {
    if (run_nonce[0]) send_framef('f', "%s %s: %s", run_nonce, what, strerror(errno));
    else send_framef('f', "%s: %s", what, strerror(errno));
    kill_run();
    exit(2);
}

static int read_full(int fd, char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    return 0;
}

/* Copy exactly len bytes from stdin to fd, in chunks, so big code never sits in memory. */
static int copy_exact(int in, int out, size_t len) {
    char buf[CHUNK];
    while (len > 0) {
        size_t want = len < sizeof buf ? len : sizeof buf;
        if (read_full(in, buf, want) < 0) return -1;
        write_all(out, buf, want);
        len -= want;
    }
    return 0;
}

static void ring_push(stream_t *s, const char *p, size_t n) {
    if (s->ring_cap == 0) { s->dropped += n; return; }
    for (size_t i = 0; i < n; i++) {
        if (s->ring_len == s->ring_cap) {
            s->ring_start = (s->ring_start + 1) % s->ring_cap;
            s->ring_len--;
            s->dropped++;
        }
        s->ring[(s->ring_start + s->ring_len) % s->ring_cap] = p[i];
        s->ring_len++;
    }
}

static void stream_take(stream_t *s, const char *p, size_t n, uint64_t max_output) {
    s->total += n;
    if (s->live < max_output) {
        size_t room = (size_t)(max_output - s->live);
        size_t now = n < room ? n : room;
        send_frame(s->tag, p, now);
        s->live += now;
        p += now;
        n -= now;
    }
    if (n) ring_push(s, p, n);
}

static void stream_finish(stream_t *s) {
    if (s->dropped) send_framef('c', "%c %" PRIu64, s->tag, s->dropped);
    size_t first = s->ring_len;
    if (s->ring_start + first > s->ring_cap) first = s->ring_cap - s->ring_start;
    if (first) send_frame(s->tag, s->ring + s->ring_start, first);
    if (s->ring_len > first) send_frame(s->tag, s->ring, s->ring_len - first);
}

/* Read the first number after `key` in a small cgroup file; -1 when there is none. */
static long long cgroup_value(const char *path, const char *key) {
    char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    const char *p = buf;
    if (key) {
        size_t klen = strlen(key);
        for (;;) {
            if (strncmp(p, key, klen) == 0 && p[klen] == ' ') { p += klen + 1; break; }
            p = strchr(p, '\n');
            if (!p) return -1;
            p++;
        }
    }
    return strtoll(p, NULL, 10);
}

static long long first_of(long long a, long long b) { return a >= 0 ? a : b; }

/* ------------------------------------------------------------------ mounts and file rules */

/* The policy's mounts, as the orchestrator checked them: ATHENA_MOUNTS holds one entry per
 * mount, "<dev>:<ino>:<rw>:<target in hex>", comma-separated. The engine, not the orchestrator,
 * resolves a mount's source path, so a source swapped for a symlink between the check and the
 * bind would show another directory here: each mount root must be the checked directory. */
#define MAX_MOUNTS 32

typedef struct {
    char target[4096];
    unsigned long long dev, ino;
    int writable;
    long long start_free; /* bytes free on its filesystem when the run began; -1 unknown */
} mount_t;

static mount_t mounts[MAX_MOUNTS];
static int n_mounts;
static long long mount_write_cap = -1; /* ATHENA_MOUNT_WRITE_CAP: bytes; -1: none */

static int unhex(const char *hex, size_t len, char *out, size_t cap) {
    if (len % 2 || len / 2 + 1 > cap) return -1;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (char)v;
    }
    out[len / 2] = '\0';
    return 0;
}

static int parse_mounts(const char *spec) {
    const char *p = spec;
    while (p && *p) {
        if (n_mounts == MAX_MOUNTS) return -1;
        mount_t *m = &mounts[n_mounts];
        int used = 0;
        if (sscanf(p, "%llu:%llu:%d:%n", &m->dev, &m->ino, &m->writable, &used) != 3) return -1;
        const char *hex = p + used, *end = strchr(hex, ',');
        size_t len = end ? (size_t)(end - hex) : strlen(hex);
        if (unhex(hex, len, m->target, sizeof m->target) < 0) return -1;
        m->start_free = -1;
        n_mounts++;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

/* Refuse to run when a mount root is not the directory the orchestrator checked. */
static void check_mounts(void) {
    for (int i = 0; i < n_mounts; i++) {
        struct stat st;
        if (mounts[i].dev == 0 && mounts[i].ino == 0) continue; /* staged by the orchestrator */
        if (lstat(mounts[i].target, &st) < 0) fail("cannot inspect a mount");
        if ((unsigned long long)st.st_dev != mounts[i].dev ||
            (unsigned long long)st.st_ino != mounts[i].ino) {
            errno = EXDEV;
            send_framef('f', "mount %s is not the directory the policy check saw "
                        "(its source was replaced after the check): run refused", mounts[i].target);
            kill_run();
            exit(2);
        }
    }
}

static long long free_bytes(const char *path) {
    struct statfs sf;
    if (statfs(path, &sf) < 0) return -1;
    return (long long)sf.f_bavail * (long long)sf.f_bsize;
}

static void note_free_space(void) {
    for (int i = 0; i < n_mounts; i++)
        if (mounts[i].writable) mounts[i].start_free = free_bytes(mounts[i].target);
}

/* The writable mount whose filesystem lost more than the cap since the run began, or -1. The
 * figure is the filesystem's: what else writes there at the same time counts too. */
static int mount_over_cap(void) {
    if (mount_write_cap < 0) return -1;
    for (int i = 0; i < n_mounts; i++) {
        if (!mounts[i].writable || mounts[i].start_free < 0) continue;
        long long now = free_bytes(mounts[i].target);
        if (now >= 0 && mounts[i].start_free - now > mount_write_cap) return i;
    }
    return -1;
}

/* Landlock: unix sockets and FIFOs may be created only in the run's private directories (its
 * tmpfs), never on a mount another run can see, so no run can open a channel to another through
 * a shared directory. A kernel without Landlock (or gVisor, which keeps sockets and FIFOs inside
 * its own sandbox anyway) leaves this out. */
/* Landlock from ABI 2 on denies every link or rename into another directory ("refer") unless a
 * ruleset handles that right and grants it: without this, even a rename from /tmp/a to /tmp/b
 * failed with EXDEV under our rulesets (npm's cache, and any code that moves files, broke).
 * Each ruleset handles it and grants it everywhere, so the rulesets restrict only what they are
 * for. (ABI 1 kernels deny reparenting whatever a ruleset says.) Special files still cannot
 * reach a mount: rename and link never cross filesystems, and none can be made on one. */
static __u64 refer_right(void) {
    int abi = (int)syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return abi >= 2 ? LANDLOCK_ACCESS_FS_REFER : 0;
}

static void allow_refer_everywhere(int ruleset, __u64 refer) {
    if (!refer) return;
    struct landlock_path_beneath_attr beneath = {.allowed_access = refer};
    beneath.parent_fd = open("/", O_PATH | O_CLOEXEC);
    if (beneath.parent_fd < 0) return;
    syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0);
    close(beneath.parent_fd);
}

static void restrict_special_files(void) {
    __u64 refer = refer_right();
    struct landlock_ruleset_attr attr = {
        .handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO | refer,
    };
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0) return;
    const char *private_dirs[] = {"/tmp", "/workspace", "/dev/shm"};
    for (size_t i = 0; i < sizeof private_dirs / sizeof *private_dirs; i++) {
        struct landlock_path_beneath_attr beneath = {.allowed_access = attr.handled_access_fs};
        beneath.parent_fd = open(private_dirs[i], O_PATH | O_CLOEXEC);
        if (beneath.parent_fd < 0) continue;
        syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0);
        close(beneath.parent_fd);
    }
    allow_refer_everywhere(rs, refer);
    syscall(SYS_landlock_restrict_self, rs, 0);
    close(rs);
}

/* seccomp: no file the code creates or changes ever carries a set-user-id or set-group-id bit
 * (chmod, open/creat with O_CREAT, mkdir, mknod with those bits fail with EPERM): on a writable
 * host mount such a file would outlive the run. Added to the engine's own filter, never removed. */
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n))
#define DENY_SETID(arg)                                              \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(arg)),                 \
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 06000, 0, 1),               \
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),            \
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define DENY_SETID_CREATE(flags, mode)                               \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(flags)),               \
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_CREAT | __O_TMPFILE, 0, 3), \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(mode)),                \
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 06000, 0, 1),               \
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),            \
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
/* Jump to the block `blk` instructions ahead when the syscall number is `nr`. */
#define ON(nr, skip) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), (skip), 0)

static void forbid_setid_bits(void) {
#if defined(__x86_64__)
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM), /* i386 calls: none of ours */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 4 */ ON(__NR_chmod, 13), ON(__NR_fchmod, 12), ON(__NR_creat, 11), ON(__NR_mkdir, 10),
        /* 8 */ ON(__NR_mknod, 9), ON(__NR_fchmodat, 12), ON(__NR_mkdirat, 11),
        /* 11 */ ON(__NR_mknodat, 10), ON(__NR_open, 13), ON(__NR_openat, 18),
        /* 14 */ ON(__NR_openat2, 23),
        /* 15: x32 calls (the same numbers plus a bit) would pass the checks above */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 18: mode in arg 1 */ DENY_SETID(1),
        /* 22: mode in arg 2 */ DENY_SETID(2),
        /* 26: open */ DENY_SETID_CREATE(1, 2),
        /* 32: openat */ DENY_SETID_CREATE(2, 3),
        /* 38: openat2: its mode sits in a struct the filter cannot read; glibc's open() does
         * not use it, so ENOSYS is what callers expect from an older kernel */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    };
    struct sock_fprog fprog = {.len = (unsigned short)(sizeof prog / sizeof *prog), .filter = prog};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) < 0) {
        dprintf(2, "athena-runner: cannot install the file-mode filter: %s\n", strerror(errno));
        _exit(126);
    }
#endif
}


/* ------------------------------------------------------------------ kernel-level refusals */

/* ATHENA_DENY ("processes", "sockets", comma-separated) comes from the policy's run-time guard
 * for interpreters that need neither (Python and JavaScript under strict): what the in-process
 * layer refuses with a readable error, the kernel refuses here too, so code that gets past
 * that layer (it lives in the code's own process) still cannot start a process or open a
 * socket. Installed before the interpreter starts; filters and rulesets are never removed. */
static int deny_processes, deny_sockets;

static void parse_deny(const char *spec) {
    deny_processes = spec && strstr(spec, "processes") != NULL;
    deny_sockets = spec && strstr(spec, "sockets") != NULL;
}

static void allow_execute(int ruleset, const char *path) {
    char real[4096];
    if (!realpath(path, real)) return;
    struct landlock_path_beneath_attr beneath = {.allowed_access = LANDLOCK_ACCESS_FS_EXECUTE};
    beneath.parent_fd = open(real, O_PATH | O_CLOEXEC);
    if (beneath.parent_fd < 0) return;
    syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0);
    close(beneath.parent_fd);
}

/* The interpreter (and the ELF loader it needs) is the only program that may be executed: a
 * later execve of anything else fails with EACCES. Without Landlock (gVisor) the fork filter
 * below still leaves at most one process. */
static void execute_only(const char *command) {
    __u64 refer = refer_right();
    struct landlock_ruleset_attr attr = {.handled_access_fs = LANDLOCK_ACCESS_FS_EXECUTE | refer};
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0) return;
    char found[4096] = "";
    if (strchr(command, '/')) {
        snprintf(found, sizeof found, "%s", command);
    } else {
        const char *path = getenv("PATH");
        char dirs[4096];
        snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
        for (char *dir = strtok(dirs, ":"); dir; dir = strtok(NULL, ":")) {
            snprintf(found, sizeof found, "%s/%s", dir, command);
            if (access(found, X_OK) == 0) break;
            found[0] = '\0';
        }
    }
    if (found[0]) allow_execute(rs, found);
    allow_execute(rs, "/lib64/ld-linux-x86-64.so.2");
    allow_execute(rs, "/lib/ld-linux-aarch64.so.1");
    allow_refer_everywhere(rs, refer);
    syscall(SYS_landlock_restrict_self, rs, 0);
    close(rs);
}

static void deny_by_filter(void) {
#if defined(__x86_64__)
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 1 */ ON(__NR_fork, 5), ON(__NR_vfork, 4), ON(__NR_clone, 4), ON(__NR_clone3, 7),
        /* 5 */ ON(__NR_socket, 7),
        /* 6 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 7: fork, vfork */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        /* 8: clone: threads only */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(0)),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        /* 11 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 12: clone3 (its flags sit in a struct): glibc falls back to clone */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        /* 13: socket */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
    };
    if (!deny_processes) { /* the process rules jump to "allow" instead */
        prog[1] = (struct sock_filter)ON(__NR_fork, 4);
        prog[2] = (struct sock_filter)ON(__NR_vfork, 3);
        prog[3] = (struct sock_filter)ON(__NR_clone, 2);
        prog[4] = (struct sock_filter)ON(__NR_clone3, 1);
    }
    if (!deny_sockets) prog[5] = (struct sock_filter)ON(__NR_socket, 0);
    struct sock_fprog fprog = {.len = (unsigned short)(sizeof prog / sizeof *prog), .filter = prog};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) < 0) {
        dprintf(2, "athena-runner: cannot install the process and socket filter: %s\n",
                strerror(errno));
        _exit(126);
    }
#endif
}

static void apply_denials(const char *command) {
    if (!deny_processes && !deny_sockets) return;
    if (deny_processes) execute_only(command);
    deny_by_filter();
}

static void start_child(char **argv, const char *workdir, int out_w, int err_w, int blob_r, int val_w,
                        int done_w) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    /* The code, not the runner, is what the kernel should pick when the cgroup runs out. */
    int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (adj >= 0) { (void)!write(adj, "1000", 4); close(adj); }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0 ||
        dup2(blob_r, 3) < 0 || dup2(val_w, 4) < 0 || (done_w >= 0 && dup2(done_w, 5) < 0)) {
        _exit(126);
    }
    for (int fd = done_w >= 0 ? 6 : 5; fd < 1024; fd++) close(fd);
    restrict_special_files();
    forbid_setid_bits();
    apply_denials(argv[0]);
    const char *home = getenv("HOME"); /* e.g. /tmp/home on a fresh tmpfs: pip --user needs it */
    if (home && home[0] == '/') (void)mkdir(home, 0700);
    if (workdir && chdir(workdir) < 0) {
        dprintf(2, "athena-runner: cannot enter %s: %s\n", workdir, strerror(errno));
        _exit(126);
    }
    execvp(argv[0], argv);
    dprintf(2, "athena-runner: cannot start %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Read the request header: one line of at most 255 bytes. Returns 0 on EOF before a request. */
static int read_header(char *line, size_t cap) {
    size_t n = 0;
    for (;;) {
        char ch;
        ssize_t r = read(STDIN_FILENO, &ch, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        if (ch == '\n') break;
        if (n + 1 >= cap) { errno = EPROTO; fail("request header too long"); }
        line[n++] = ch;
    }
    line[n] = '\0';
    return 1;
}

/* Read and drop len bytes of stdin (what is left of a request that will not run). */
static int skip_exact(size_t len) {
    char buf[CHUNK];
    while (len > 0) {
        size_t want = len < sizeof buf ? len : sizeof buf;
        if (read_full(STDIN_FILENO, buf, want) < 0) return -1;
        len -= want;
    }
    return 0;
}

/* ------------------------------------------------------------------ files in */

/* A name the orchestrator checked; checked again: relative, no empty, "." or ".." part. */
static int plain_name(const char *name) {
    if (!name[0] || name[0] == '/') return 0;
    const char *p = name;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.')) return 0;
        p = end ? end + 1 : p + len;
        if (end && !*p) return 0; /* a trailing slash */
    }
    return 1;
}

/* Open directory `name` under `at` without following a link. O_NOFOLLOW alone is not enough:
 * gVisor follows a link opened with O_DIRECTORY | O_NOFOLLOW. So the entry is looked at first
 * (a link or anything but a directory: ENOTDIR), and what was opened must be that directory
 * (the code may swap it in between: EXDEV). */
static int open_dir_nofollow(int at, const char *name) {
    struct stat before, after;
    if (fstatat(at, name, &before, AT_SYMLINK_NOFOLLOW) < 0) return -1;
    if (!S_ISDIR(before.st_mode)) { errno = ENOTDIR; return -1; }
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &after) < 0 || after.st_dev != before.st_dev || after.st_ino != before.st_ino) {
        close(fd);
        errno = EXDEV;
        return -1;
    }
    return fd;
}

/* Open the directory that will hold `name` under `root`, creating what is missing, and never
 * following a link: a link the code left in a session's workspace is refused (ENOTDIR).
 * Returns the directory fd and points *leaf at the last part. */
static int open_parent(int root, char *name, char **leaf) {
    int dir = dup(root);
    if (dir < 0) return -1;
    char *p = name;
    for (;;) {
        char *slash = strchr(p, '/');
        if (!slash) break;
        *slash = '\0';
        if (mkdirat(dir, p, 0755) < 0 && errno != EEXIST) { *slash = '/'; close(dir); return -1; }
        int next = open_dir_nofollow(dir, p);
        *slash = '/';
        close(dir);
        if (next < 0) return -1;
        dir = next;
        p = slash + 1;
    }
    *leaf = p;
    return dir;
}

/* Open file `leaf` under `dir` for writing, empty, without following a link: a new file is
 * created exclusively (a link in the way makes that fail); an existing one must be a regular
 * file, and the very one looked at, before it is emptied. */
static int open_input(int dir, const char *leaf) {
    struct stat before, after;
    if (fstatat(dir, leaf, &before, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno != ENOENT) return -1;
        return openat(dir, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
    }
    if (!S_ISREG(before.st_mode)) { errno = S_ISLNK(before.st_mode) ? ELOOP : EISDIR; return -1; }
    int fd = openat(dir, leaf, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &after) < 0 || after.st_dev != before.st_dev || after.st_ino != before.st_ino ||
        ftruncate(fd, 0) < 0) {
        close(fd);
        errno = EXDEV;
        return -1;
    }
    return fd;
}

/* Write the request's files under the workspace. On the first error, the message goes to
 * `error`, the rest of the files' bytes are read and dropped, and -1 is returned (-2: stdin
 * ended). */
static int write_inputs(int root, unsigned long long len, char *error, size_t error_cap) {
    char head[64], name[4096];
    while (len > 0) {
        size_t n = 0;
        for (;;) { /* "<name_len> <size>\n" */
            if (n + 1 >= sizeof head || len == 0) { errno = EPROTO; fail("bad files section"); }
            if (read_full(STDIN_FILENO, head + n, 1) < 0) return -2;
            len--;
            if (head[n] == '\n') break;
            n++;
        }
        head[n] = '\0';
        unsigned long long name_len, size;
        if (sscanf(head, "%llu %llu", &name_len, &size) != 2 || name_len == 0 ||
            name_len >= sizeof name || name_len + size > len) {
            errno = EPROTO;
            fail("bad files section");
        }
        if (read_full(STDIN_FILENO, name, (size_t)name_len) < 0) return -2;
        name[name_len] = '\0';
        len -= name_len;
        char *leaf = NULL;
        int dir = -1, fd = -1;
        if (error[0] || strlen(name) != name_len || !plain_name(name)) {
            if (!error[0]) snprintf(error, error_cap, "input file name refused");
        } else if ((dir = open_parent(root, name, &leaf)) < 0 || (fd = open_input(dir, leaf)) < 0) {
            int why = errno;
            snprintf(error, error_cap, "input file %s cannot be written: %s%s", name, strerror(why),
                     why == ELOOP || why == ENOTDIR || why == EEXIST || why == EXDEV || why == EISDIR
                         ? " (a link, a directory or a file is in the way; links are never followed)"
                         : "");
        }
        if (dir >= 0) close(dir);
        struct stat st;
        if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
            snprintf(error, error_cap, "input file %s: something that is not a regular file is in the way",
                     name);
            close(fd);
            fd = -1;
        }
        if (fd >= 0) {
            char buf[CHUNK];
            unsigned long long left = size;
            while (left > 0) {
                size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
                if (read_full(STDIN_FILENO, buf, want) < 0) { close(fd); return -2; }
                const char *q = buf;
                size_t todo = want;
                while (todo > 0 && !error[0]) {
                    ssize_t w = write(fd, q, todo);
                    if (w < 0 && errno == EINTR) continue;
                    if (w < 0) {
                        snprintf(error, error_cap, "input file %s cannot be written: %s", name, strerror(errno));
                        break;
                    }
                    q += w;
                    todo -= (size_t)w;
                }
                left -= want;
            }
            close(fd);
        } else if (skip_exact((size_t)size) < 0) {
            return -2;
        }
        len -= size;
    }
    return error[0] ? -1 : 0;
}

/* ------------------------------------------------------------------ files out */

#define OUT_MAX_ENTRIES 2000 /* entries looked at per call (files, directories, the rest) */
#define OUT_MAX_DEPTH 16

typedef struct {
    const char *nonce;
    unsigned long long budget; /* bytes that may still be sent */
    int entries;
    int64_t since_s;           /* files whose status changed before this (session calls) are old */
    long since_ns;
} collect_t;

/* A file frame: "<nonce> <kind> <name in hex> <size>" (names may be long: no 1 KiB cap here). */
static void send_file_frame(const char *nonce, char kind, const char *hex, long long size) {
    char head[8500];
    int n = snprintf(head, sizeof head, "%s %c %s %lld", nonce, kind, hex, size);
    if (n > 0 && (size_t)n < sizeof head) send_frame('F', head, (size_t)n);
}

static void hex_name(const char *name, char *out, size_t cap) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p && n + 3 < cap; p++, n += 2)
        snprintf(out + n, 3, "%02x", *p);
    out[n] = '\0';
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void send_file(collect_t *c, int fd, const struct stat *st, char kind, const char *path) {
    char hex[8300];
    hex_name(path, hex, sizeof hex);
    if ((unsigned long long)st->st_size > c->budget) {
        send_file_frame(c->nonce, 'o', hex, (long long)st->st_size);
        return;
    }
    send_file_frame(c->nonce, kind, hex, (long long)st->st_size);
    char buf[CHUNK];
    unsigned long long left = (unsigned long long)st->st_size;
    while (left > 0) { /* never more than the size it had: a file that grows is cut there */
        ssize_t n = read(fd, buf, left < sizeof buf ? (size_t)left : sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        send_frame('D', buf, (size_t)n);
        left -= (unsigned long long)n;
        c->budget -= (unsigned long long)n;
    }
}

/* The files a session's last call sent, as they were: file timestamps are coarse (a tick of a
 * few ms), so a file written at the end of one call can look changed at the start of the next;
 * one that is still exactly as sent is not sent again. */
typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec ctime;
} sent_t;

static sent_t sent_before[OUT_MAX_ENTRIES], sent_now[OUT_MAX_ENTRIES];
static int n_sent_before, n_sent_now;

static int sent_as_is(const struct stat *st) {
    for (int i = 0; i < n_sent_before; i++) {
        const sent_t *s = &sent_before[i];
        if (s->dev == st->st_dev && s->ino == st->st_ino && s->size == st->st_size &&
            s->ctime.tv_sec == st->st_ctim.tv_sec && s->ctime.tv_nsec == st->st_ctim.tv_nsec)
            return 1;
    }
    return 0;
}

static void remember_sent(const struct stat *st) {
    if (n_sent_now < OUT_MAX_ENTRIES)
        sent_now[n_sent_now++] = (sent_t){st->st_dev, st->st_ino, st->st_size, st->st_ctim};
}

static int changed_since(const collect_t *c, const struct stat *st) {
    if (c->since_s == 0) return 1;
    return (st->st_ctim.tv_sec > c->since_s ||
            (st->st_ctim.tv_sec == c->since_s && st->st_ctim.tv_nsec >= c->since_ns)) &&
           !sent_as_is(st);
}

/* Send the regular files under directory `dir` (closed here), never following a link and never
 * opening anything that could block (a FIFO); what is not a regular file or directory is
 * reported by name ('s'), what is over the budget too ('o'). With `take`, each file sent is
 * removed (figures: each is returned once). */
static void collect_dir(collect_t *c, int dir, const char *prefix, char kind, int take, int depth) {
    DIR *d = fdopendir(dir);
    if (!d) { close(dir); return; }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) && c->entries < OUT_MAX_ENTRIES) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 32;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        if (!(names[count] = strdup(e->d_name))) break;
        count++;
        c->entries++;
    }
    if (count) qsort(names, count, sizeof *names, by_name);
    for (size_t i = 0; i < count; i++) {
        char path[4096];
        int len = snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "/" : "", names[i]);
        free(names[i]);
        if (len < 0 || (size_t)len >= sizeof path) continue;
        const char *leaf = path + (prefix[0] ? strlen(prefix) + 1 : 0);
        struct stat seen, st;
        int fd = -1;
        /* Looked at before it is opened (gVisor does not always honour O_NOFOLLOW): only a
         * regular file or a directory is opened, and it must be the one looked at. */
        int looked = fstatat(dirfd(d), leaf, &seen, AT_SYMLINK_NOFOLLOW) == 0;
        if (looked && !S_ISDIR(seen.st_mode) && !changed_since(c, &seen)) continue; /* old news */
        if (looked && (S_ISREG(seen.st_mode) || S_ISDIR(seen.st_mode)))
            fd = openat(dirfd(d), leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0 || st.st_dev != seen.st_dev || st.st_ino != seen.st_ino) {
            char hex[8300];
            hex_name(path, hex, sizeof hex);
            send_file_frame(c->nonce, 's', hex, 0); /* a link (ELOOP), or gone */
            if (fd >= 0) close(fd);
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (depth < OUT_MAX_DEPTH) collect_dir(c, fd, path, kind, take, depth + 1);
            else close(fd);
            continue;
        }
        if (!S_ISREG(st.st_mode)) {
            char hex[8300];
            hex_name(path, hex, sizeof hex);
            send_file_frame(c->nonce, 's', hex, 0);
        } else if (changed_since(c, &st)) {
            send_file(c, fd, &st, kind, path);
            if (take) unlinkat(dirfd(d), leaf, 0);
            else remember_sent(&st);
        }
        close(fd);
    }
    free(names);
    closedir(d);
}

/* The files of /workspace/out (changed during this call) and the figures the bootstrap saved. */
static void collect_outputs(collect_t *c, int workfd, int figures_too) {
    int out = workfd >= 0 ? open_dir_nofollow(workfd, "out") : -1;
    n_sent_now = 0;
    if (out >= 0) collect_dir(c, out, "", 'f', 0, 0);
    memcpy(sent_before, sent_now, (size_t)n_sent_now * sizeof *sent_now);
    n_sent_before = n_sent_now;
    int figures = -1, root = figures_too ? open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    char path[sizeof FIGURES_DIR]; /* walked part by part from /, never through a link */
    memcpy(path, FIGURES_DIR, sizeof path);
    for (char *part = strtok(path, "/"); root >= 0 && part; part = strtok(NULL, "/")) {
        figures = open_dir_nofollow(root, part);
        close(root);
        root = figures;
    }
    if (figures >= 0) {
        struct stat st;
        if (fstat(figures, &st) == 0 && st.st_uid == getuid()) {
            collect_t fig = *c;
            fig.since_s = 0;
            collect_dir(&fig, figures, "", 'a', 1, OUT_MAX_DEPTH); /* flat: no subdirectories */
            c->budget = fig.budget;
        } else {
            close(figures);
        }
    }
}

/* ------------------------------------------------------------------ session nonces */

/* Under gVisor the code can open this process's stdin and stdout through /proc/1/fd. In a
 * one-shot run that does not matter: the request (and its nonce) is read before any code runs.
 * In a session, later requests arrive while the code of earlier calls may still run, and could
 * be read by it. So a session's nonces never travel after its first request: that request (read
 * before any code of the session exists) carries a 128-bit key, and call n's nonce is
 * SipHash-2-4(key, 2n) and SipHash-2-4(key, 2n+1) in hex, which only this process and the
 * orchestrator can compute. orchestrator.backends.protocol.session_nonce is the same function. */
static uint64_t session_key[2];
static unsigned long long session_calls; /* requests read so far */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                  \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                  \
    } while (0)

/* SipHash-2-4 of one 64-bit word (as its 8 little-endian bytes) under a 128-bit key. */
static uint64_t siphash_word(const uint64_t key[2], uint64_t m) {
    uint64_t v0 = key[0] ^ 0x736f6d6570736575ULL, v1 = key[1] ^ 0x646f72616e646f6dULL;
    uint64_t v2 = key[0] ^ 0x6c7967656e657261ULL, v3 = key[1] ^ 0x7465646279746573ULL;
    v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
    uint64_t b = (uint64_t)8 << 56;
    v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
    v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static void derive_nonce(unsigned long long call, char out[NONCE_MAX + 1]) {
    snprintf(out, NONCE_MAX + 1, "%016" PRIx64 "%016" PRIx64, siphash_word(session_key, 2 * call),
             siphash_word(session_key, 2 * call + 1));
}

/* The first request's nonce field is the session's key: the hex of its 16 bytes; k0 and k1 are
 * the little-endian readings of the first and the last 8. */
static int read_key(const char *hex) {
    unsigned char bytes[16];
    if (strlen(hex) != 32) return -1;
    for (int i = 0; i < 16; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        bytes[i] = (unsigned char)v;
    }
    for (int w = 0; w < 2; w++) {
        session_key[w] = 0;
        for (int i = 7; i >= 0; i--) session_key[w] = (session_key[w] << 8) | bytes[8 * w + i];
    }
    return 0;
}

/* ------------------------------------------------------------------ one call */

typedef struct {
    int out_r, err_r, val_r, blob_w, done_r; /* the interpreter's pipes (done_r: sessions) */
    int workfd;                              /* the workspace, for files in and out */
    const char *code_file;
    const char *workdir;
    int session;
} runner_t;

/* ------------------------------------------------------------------ requirements */

#define INSTALL_MAX 65536     /* the installer's command line, NUL-separated */
#define INSTALL_TAIL 4000     /* the last bytes of a failed install's output that are shown */

static char install_tail[INSTALL_TAIL];
static size_t install_tail_len;

static void keep_tail(const char *p, size_t n) {
    if (n >= INSTALL_TAIL) {
        memcpy(install_tail, p + n - INSTALL_TAIL, INSTALL_TAIL);
        install_tail_len = INSTALL_TAIL;
        return;
    }
    if (install_tail_len + n > INSTALL_TAIL) {
        size_t drop = install_tail_len + n - INSTALL_TAIL;
        memmove(install_tail, install_tail + drop, install_tail_len - drop);
        install_tail_len -= drop;
    }
    memcpy(install_tail + install_tail_len, p, n);
    install_tail_len += n;
}

/* Run the installer the orchestrator asked for (npm, with checked package specs) as a process
 * of this runner, not of the interpreter: where the policy refuses processes to the code, the
 * kernel refuses them to the interpreter, and npm is a program of its own. It gets the run's
 * file rules (no special files on mounts, no set-id bits) but not the code's process and
 * socket refusals; it runs no package scripts (--ignore-scripts), and its output is kept apart
 * (only the tail of a failure is shown). Returns its wait status, or -1 when it was killed at
 * the call's deadline (then *timed_out). */
static int run_install(char *args, size_t len, int64_t deadline, const char *workdir, int *timed_out) {
    char *argv[256];
    int argc = 0;
    for (char *p = args; p < args + len && argc < 255; p += strlen(p) + 1) argv[argc++] = p;
    argv[argc] = NULL;
    if (argc == 0) return 0;
    install_tail_len = 0;
    int out[2];
    if (pipe2(out, O_CLOEXEC)) fail("pipe");
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0) _exit(126);
        for (int fd = 3; fd < 1024; fd++) close(fd);
        restrict_special_files();
        forbid_setid_bits();
        const char *home = getenv("HOME");
        if (home && home[0] == '/') (void)mkdir(home, 0700);
        if (workdir && chdir(workdir) < 0) _exit(126);
        execvp(argv[0], argv);
        dprintf(2, "athena-runner: cannot start %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    char buf[CHUNK];
    for (;;) {
        int wait_ms = -1;
        if (deadline) {
            int64_t left = deadline - now_ns();
            wait_ms = left <= 0 ? 0 : (int)(left / 1000000LL) + 1;
        }
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        int rc = poll(&p, 1, wait_ms);
        if (rc < 0 && errno == EINTR) continue;
        if (rc == 0 || (deadline && now_ns() >= deadline)) { *timed_out = 1; break; }
        ssize_t n = read(out[0], buf, sizeof buf);
        if (n > 0) keep_tail(buf, (size_t)n);
        else if (n == 0 || errno != EINTR) break;
    }
    close(out[0]);
    kill(-pid, SIGKILL); /* what it left running goes with it */
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return *timed_out ? -1 : st;
}

/* A failed install: its output's tail and a note on stderr, and a policy report (the run's
 * "policy: requirements" violation) on the value channel's frame. */
static void report_install_failure(int st, int timed_out) {
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (install_tail_len) send_frame('e', install_tail, install_tail_len);
    char note[256];
    if (timed_out) snprintf(note, sizeof note, "requirements could not be installed before the timeout");
    else snprintf(note, sizeof note, "requirements could not be installed (npm exited with %d)", code);
    send_framef('e', "%s[athena-sandbox] %s; the code did not run\n",
                install_tail_len && install_tail[install_tail_len - 1] != '\n' ? "\n" : "", note);
    send_framef('v', "\n{\"policy\": {\"kind\": \"requirements\", \"message\": \"%s\", "
                "\"detail\": {\"installer\": \"npm\", \"exit_code\": %d}}}\n",
                note, timed_out ? -1 : code);
}

typedef struct {
    long long oom, pids, cpu;
} counters_t;

static counters_t read_counters(void) {
    counters_t c;
    c.oom = first_of(cgroup_value("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
                     cgroup_value("/sys/fs/cgroup/memory.events", "oom_kill"));
    c.pids = first_of(cgroup_value("/sys/fs/cgroup/pids/pids.events", "max"),
                      cgroup_value("/sys/fs/cgroup/pids.events", "max"));
    c.cpu = cgroup_value("/sys/fs/cgroup/cpuacct/cpuacct.usage", NULL);
    if (c.cpu < 0) {
        long long usec = cgroup_value("/sys/fs/cgroup/cpu.stat", "usage_usec");
        c.cpu = usec >= 0 ? usec * 1000 : -1;
    }
    return c;
}

static long long less(long long now, long long base) {
    return now < 0 ? now : base < 0 ? now : now - base;
}

/* What a session's counters did between two calls: a violation then ends the session too. */
static counters_t last_end; /* the counters when the session's last call ended */
static int have_last_end;

static void send_exit(const char *nonce, int status, int have_status, int timed_out, int64_t run_ns,
                      int value_truncated, int mount_hit, counters_t base, int session, int alive,
                      int interrupted, counters_t between) {
    counters_t now = read_counters();
    long long peak = first_of(cgroup_value("/sys/fs/cgroup/memory/memory.max_usage_in_bytes", NULL),
                              cgroup_value("/sys/fs/cgroup/memory.peak", NULL));
    int exited = have_status && WIFEXITED(status);
    int signaled = have_status && WIFSIGNALED(status);
    char code[16] = "null", sig[16] = "null";
    if (exited) snprintf(code, sizeof code, "%d", WEXITSTATUS(status));
    if (signaled) snprintf(sig, sizeof sig, "%d", WTERMSIG(status));
    send_framef('x',
                "{\"exit_code\":%s,\"signal\":%s,\"timed_out\":%s,\"oom_kills\":%lld,"
                "\"pids_limit_hits\":%lld,\"memory_peak_bytes\":%lld,\"cpu_ns\":%lld,"
                "\"run_ns\":%" PRId64 ",\"value_truncated\":%s,\"mount_write_cap_hit\":%d,"
                "\"session\":%s,\"alive\":%s,\"interrupted\":%s,\"oom_between\":%lld,"
                "\"pids_between\":%lld,\"nonce\":\"%s\"}",
                code, sig, timed_out ? "true" : "false", less(now.oom, base.oom),
                less(now.pids, base.pids), peak, less(now.cpu, base.cpu), run_ns,
                value_truncated ? "true" : "false", mount_hit, session ? "true" : "false",
                alive ? "true" : "false", interrupted ? "true" : "false", between.oom, between.pids,
                nonce);
    last_end = now;
    have_last_end = 1;
}

static void reset_stream(stream_t *s) {
    s->total = s->live = s->dropped = 0;
    s->ring_start = s->ring_len = 0;
}

/* Parse the interpreter's "<status>\n" on the done channel (sessions). */
static int read_done(int fd, int *status) {
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n <= 0) return n == 0 ? -1 : 0;
    buf[n] = '\0';
    *status = (int)strtol(buf, NULL, 10) & 0xff;
    return 1;
}

enum { CALL_NEXT, CALL_STOP };

/* Serve one request: its code, parameters and files in; output, value, files and the exit
 * report out. In a session the interpreter stays (CALL_NEXT) unless it ended or could not be
 * interrupted; a one-shot run always ends (CALL_STOP). */
static int serve_call(runner_t *r, stream_t streams[2], int sfd) {
    char line[256];
    if (!read_header(line, sizeof line)) return CALL_STOP; /* the owner is gone */
    char proto[16];
    char nonce[NONCE_MAX + 1];
    unsigned long long code_len, blob_len, install_len, files_len, timeout_ms, max_output, files_cap,
        flags;
    if (sscanf(line, "%15s %llu %llu %llu %llu %llu %llu %llu %llu %64s", proto, &code_len,
               &blob_len, &install_len, &files_len, &timeout_ms, &max_output, &files_cap, &flags,
               nonce) != 10 ||
        strcmp(proto, PROTOCOL) != 0 || strspn(nonce, "0123456789abcdef") != strlen(nonce) ||
        max_output > (1ULL << 30) || install_len > INSTALL_MAX) {
        errno = EPROTO;
        fail("bad request header");
    }
    if (r->session) { /* the first request brings the key; later ones only their number */
        if (session_calls == 0 && read_key(nonce) < 0) { errno = EPROTO; fail("bad session key"); }
        if (session_calls > 0 && strtoull(nonce, NULL, 16) != session_calls) {
            derive_nonce(session_calls, run_nonce);
            errno = EPROTO;
            fail("session calls out of step (a request went missing)");
        }
        derive_nonce(session_calls++, nonce);
    }
    memcpy(run_nonce, nonce, sizeof run_nonce);
    (void)unlink(r->code_file); /* a session's code may have left a link or a directory there */
    int cf = open(r->code_file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (cf < 0) fail("cannot create the code file");
    if (copy_exact(STDIN_FILENO, cf, (size_t)code_len) < 0) return CALL_STOP;
    close(cf);
    size_t prefix = 0;
    char *blob_buf = malloc((size_t)blob_len + 32);
    if (!blob_buf) fail("malloc");
    if (r->session) prefix = (size_t)snprintf(blob_buf, 32, "%llu\n", blob_len);
    if (blob_len && read_full(STDIN_FILENO, blob_buf + prefix, (size_t)blob_len) < 0) return CALL_STOP;
    size_t blob_total = prefix + (size_t)blob_len, blob_sent = 0;
    char install[INSTALL_MAX + 1];
    if (install_len && read_full(STDIN_FILENO, install, (size_t)install_len) < 0) return CALL_STOP;
    install[install_len] = '\0';
    char error[4400] = "";
    int wrote = write_inputs(r->workfd, files_len, error, sizeof error);
    if (wrote == -2) return CALL_STOP;
    if (wrote < 0) { /* the caller's files cannot be written: nothing runs */
        send_framef('E', "%s %s", nonce, error);
        free(blob_buf);
        return r->session ? CALL_NEXT : CALL_STOP;
    }
    counters_t between = {0, 0, 0};
    if (r->session && have_last_end) {
        /* What happened since the last call: the interpreter gone, or a memory or process
         * limit hit by what the code left running. Either ends the session: this call does not
         * run, its report says why (no begin frame: the code never started). */
        counters_t now = read_counters();
        between.oom = now.oom > last_end.oom ? now.oom - last_end.oom : 0;
        between.pids = now.pids > last_end.pids ? now.pids - last_end.pids : 0;
        int st = 0, gone = waitpid(child_pid, &st, WNOHANG) == child_pid;
        if (gone || between.oom > 0 || between.pids > 0) {
            free(blob_buf);
            kill_run();
            send_exit(nonce, st, gone, 0, 0, 0, -1, now, r->session, 0, 0, between);
            return CALL_STOP;
        }
    }

    for (int s = 0; s < 2; s++) {
        reset_stream(&streams[s]);
        free(streams[s].ring);
        streams[s].ring_cap = (size_t)(max_output / 2);
        streams[s].ring = malloc(streams[s].ring_cap ? streams[s].ring_cap : 1);
        if (!streams[s].ring) fail("malloc");
    }
    char *value = malloc((size_t)max_output + 1);
    if (!value) fail("malloc");
    size_t value_len = 0;
    int value_truncated = 0;
    int blob_fd = r->blob_w;
    struct timespec coarse = {0, 0};
    if (r->session) clock_gettime(CLOCK_REALTIME_COARSE, &coarse);
    counters_t base = {0, 0, 0};
    if (r->session) base = read_counters();

    note_free_space();
    int watch_mounts = mount_write_cap >= 0 && n_mounts > 0, mount_hit = -1;
    int64_t start = now_ns();
    int64_t deadline = timeout_ms ? start + (int64_t)timeout_ms * 1000000LL : 0;
    int64_t drain_until = 0, end = 0, interrupt_until = 0;
    int status = 0, have_status = 0, timed_out = 0, done = 0, interrupted = 0;
    send_frame('B', NULL, 0);
    if (install_len) { /* the requirements, before the code has its parameters */
        int install_timed_out = 0;
        int ist = run_install(install, (size_t)install_len, deadline, r->workdir, &install_timed_out);
        if (ist != 0) {
            report_install_failure(ist, install_timed_out);
            free(value);
            free(blob_buf);
            int st = install_timed_out ? 0 : (1 << 8); /* exit status 1, as a failed install */
            send_exit(nonce, st, !install_timed_out, install_timed_out, now_ns() - start, 0, -1,
                      base, r->session, r->session, 0, between);
            return r->session ? CALL_NEXT : CALL_STOP;
        }
    }
    if (blob_total == 0 && !r->session) { close(blob_fd); blob_fd = -1; r->blob_w = -1; }

    char buf[CHUNK];
    for (;;) {
        int open_streams = streams[0].fd >= 0 || streams[1].fd >= 0 || r->val_r >= 0;
        if (have_status && (!open_streams || now_ns() >= drain_until)) break;
        if (done) break;
        struct pollfd p[7];
        p[0] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        p[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
        p[2] = (struct pollfd){.fd = streams[0].fd, .events = POLLIN};
        p[3] = (struct pollfd){.fd = streams[1].fd, .events = POLLIN};
        p[4] = (struct pollfd){.fd = r->val_r, .events = POLLIN};
        p[5] = (struct pollfd){.fd = blob_sent < blob_total ? blob_fd : -1, .events = POLLOUT};
        p[6] = (struct pollfd){.fd = have_status ? -1 : r->done_r, .events = POLLIN};
        int wait_ms = -1;
        int64_t until = have_status ? drain_until : interrupt_until ? interrupt_until : deadline;
        if (until) {
            int64_t left = until - now_ns();
            wait_ms = left <= 0 ? 0 : (int)(left / 1000000LL) + 1;
        }
        if (watch_mounts && !have_status && (wait_ms < 0 || wait_ms > MOUNT_CHECK_MS))
            wait_ms = MOUNT_CHECK_MS;
        int rc = poll(p, 7, wait_ms);
        if (rc < 0 && errno != EINTR) fail("poll");
        if (!have_status && deadline && now_ns() >= deadline && !timed_out) {
            timed_out = 1;
            if (r->session) { /* like Ctrl-C in a notebook: the interpreter may recover */
                kill(child_pid, SIGINT);
                interrupt_until = now_ns() + INTERRUPT_GRACE_NS;
            } else {
                kill_run();
            }
        } else if (interrupt_until && !have_status && now_ns() >= interrupt_until) {
            interrupt_until = 0;
            kill_run(); /* it did not stop: the session's state is lost */
        }
        if (watch_mounts && !have_status && mount_hit < 0 && (mount_hit = mount_over_cap()) >= 0)
            kill_run(); /* it wrote more than its share to a host directory */
        if (rc <= 0) continue;
        if (p[0].revents) {
            ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) { kill_run(); exit(0); }
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo != SIGCHLD) { kill_run(); exit(0); }
            }
            for (;;) {
                int st;
                pid_t pid = waitpid(-1, &st, WNOHANG);
                if (pid <= 0) break;
                if (pid == child_pid && !have_status) {
                    status = st;
                    have_status = 1;
                    end = now_ns();
                    kill_run(); /* background processes die with the run */
                    drain_until = end + DRAIN_NS;
                }
            }
        }
        for (int s = 0; s < 2; s++) {
            if (!p[2 + s].revents) continue;
            ssize_t n = read(streams[s].fd, buf, sizeof buf);
            if (n > 0) stream_take(&streams[s], buf, (size_t)n, max_output);
            else if (n == 0 || (errno != EINTR && errno != EAGAIN)) { close(streams[s].fd); streams[s].fd = -1; }
        }
        if (p[4].revents) {
            ssize_t n = read(r->val_r, buf, sizeof buf);
            if (n > 0) {
                size_t room = (size_t)max_output - value_len;
                size_t keep = (size_t)n < room ? (size_t)n : room;
                memcpy(value + value_len, buf, keep);
                value_len += keep;
                if (keep < (size_t)n) value_truncated = 1;
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) { close(r->val_r); r->val_r = -1; }
        }
        if (p[5].revents) {
            ssize_t n = write(blob_fd, blob_buf + blob_sent, blob_total - blob_sent);
            if (n > 0) blob_sent += (size_t)n;
            if (n < 0 && errno != EAGAIN && errno != EINTR) blob_sent = blob_total; /* it closed fd 3 */
            if (blob_sent == blob_total && !r->session) { close(blob_fd); blob_fd = -1; r->blob_w = -1; }
        }
        if (p[6].revents && !have_status) {
            int got = read_done(r->done_r, &status);
            if (got > 0) {
                done = 1;
                end = now_ns();
                interrupted = timed_out;
            } else if (got < 0) { /* it closed the done channel: this session cannot go on */
                close(r->done_r);
                r->done_r = -1;
                kill_run();
            }
        }
    }
    if (done) { /* what the call wrote before it said it was done is in the pipes: take it */
        for (int s = 0; s < 2; s++) {
            ssize_t n;
            while (streams[s].fd >= 0 && (n = read(streams[s].fd, buf, sizeof buf)) > 0)
                stream_take(&streams[s], buf, (size_t)n, max_output);
        }
        ssize_t n;
        while (r->val_r >= 0 && (n = read(r->val_r, buf, sizeof buf)) > 0) {
            size_t room = (size_t)max_output - value_len;
            size_t keep = (size_t)n < room ? (size_t)n : room;
            memcpy(value + value_len, buf, keep);
            value_len += keep;
            if (keep < (size_t)n) value_truncated = 1;
        }
    }
    stream_finish(&streams[0]);
    stream_finish(&streams[1]);
    if (value_len && !value_truncated) send_frame('v', value, value_len);
    free(value);
    free(blob_buf);
    collect_t c = {.nonce = nonce, .budget = files_cap, .entries = 0,
                   .since_s = coarse.tv_sec, .since_ns = coarse.tv_nsec};
    collect_outputs(&c, r->workfd, (int)(flags & FLAG_FIGURES));
    int alive = r->session && done && !have_status;
    if (done) { /* a session call: the status is the one the interpreter reported */
        status = (status & 0xff) << 8; /* as waitpid would give an exit status */
        have_status = 1;
    }
    send_exit(nonce, status, have_status, timed_out, (end ? end : now_ns()) - start, value_truncated,
              mount_hit, base, r->session, alive, interrupted, between);
    return alive ? CALL_NEXT : CALL_STOP;
}

static int usage(void) {
    fprintf(stderr, "usage: athena-runner --code-file PATH [--workdir DIR] -- COMMAND [ARG...]\n");
    return 64;
}

int main(int argc, char **argv) {
    const char *code_file = NULL, *workdir = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) { i++; break; }
        if (strcmp(argv[i], "--code-file") == 0 && i + 1 < argc) code_file = argv[++i];
        else if (strcmp(argv[i], "--workdir") == 0 && i + 1 < argc) workdir = argv[++i];
        else return usage();
    }
    if (!code_file || i >= argc) return usage();
    char **command = argv + i;

    const char *mount_spec = getenv("ATHENA_MOUNTS");
    if (mount_spec && parse_mounts(mount_spec) < 0) { errno = EINVAL; fail("bad ATHENA_MOUNTS"); }
    const char *cap_spec = getenv("ATHENA_MOUNT_WRITE_CAP");
    if (cap_spec) mount_write_cap = strtoll(cap_spec, NULL, 10);
    parse_deny(getenv("ATHENA_DENY"));
    const char *session_spec = getenv("ATHENA_SESSION"); /* kept: the bootstrap reads it too */
    int session = session_spec && strcmp(session_spec, "1") == 0;
    unsetenv("ATHENA_DENY");
    unsetenv("ATHENA_MOUNTS"); /* the code's environment is the policy's, nothing more */
    unsetenv("ATHENA_MOUNT_WRITE_CAP");
    check_mounts();

    /* Not dumpable: the code (same uid) can neither ptrace this process nor open its fds. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (getpid() != 1) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) fail("signalfd");

    /* The workspace's out/ exists before the code runs: it only has to write there. */
    int workfd = open(workdir ? workdir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (workfd >= 0) (void)mkdirat(workfd, "out", 0755);
    int out[2], err[2], blob[2], val[2], done[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || pipe2(blob, O_CLOEXEC) || pipe2(val, O_CLOEXEC) ||
        (session && pipe2(done, O_CLOEXEC)))
        fail("pipe");
    child_pid = fork();
    if (child_pid < 0) fail("fork");
    if (child_pid == 0) start_child(command, workdir, out[1], err[1], blob[0], val[1], done[1]);
    close(out[1]); close(err[1]); close(blob[0]); close(val[1]);
    if (session) {
        close(done[1]);
        /* Between calls the pipes are read without blocking: what a call wrote is taken at once. */
        fcntl(out[0], F_SETFL, O_NONBLOCK);
        fcntl(err[0], F_SETFL, O_NONBLOCK);
        fcntl(val[0], F_SETFL, O_NONBLOCK);
    }
    fcntl(blob[1], F_SETFL, O_NONBLOCK);
    send_frame('R', PROTOCOL, strlen(PROTOCOL));

    runner_t r = {.out_r = out[0], .err_r = err[0], .val_r = val[0], .blob_w = blob[1], .done_r = done[0],
                  .workfd = workfd, .code_file = code_file, .workdir = workdir, .session = session};
    stream_t streams[2] = {{.fd = out[0], .tag = 'o'}, {.fd = err[0], .tag = 'e'}};
    while (serve_call(&r, streams, sfd) == CALL_NEXT) {
    }
    kill_run();
    return 0;
}
