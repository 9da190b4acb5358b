"""Facts of the public contract that several test modules check."""

from __future__ import annotations

from dataclasses import dataclass

ISSUE_RESULT_KEYS = frozenset({
    "success", "execution_id", "stdout", "stderr", "exit_code", "execution_time_ms",
    "violations", "violation_details", "sandbox_id", "language", "timestamp", "sandbox_mode",
    "isolation", "output", "error", "error_type", "issues",
})  # fmt: skip
"""The keys the foundation issue promises in every execute_code dict (never removed)."""

RESULT_KEYS = ISSUE_RESULT_KEYS | {
    "policy",
    "timeout_seconds",
    "resources",
    "total_time_ms",
    # issue #12: sessions, and files in and out
    "session_id",
    "session_state",
    "files",
    "artifacts",
}
"""Every key execute_code returns today."""

FILES_IN = {"data.txt": "héllo wörld", "in/deep/blob.bin": bytes([0, 1, 2, 127, 128, 255])}
"""The files the contract suite sends: text, and binary under a nested name."""
FILES_IN_SEEN = "héllo wörld\n0001027f80ff\n"
"""What ``read_files`` prints of :data:`FILES_IN`."""
REPORT_CSV = b"a,b\n1,2\n"
"""What ``write_out`` writes to ``out/report.csv``."""


@dataclass(frozen=True)
class Snippets:
    """One language's code for each behaviour of the contract suite (None: it has no such one).

    Attributes:
        hello: prints ``hello`` and a newline.
        fail: fails with exit status 1 and prints ``boom`` and ``error`` (the error's name) on
            stderr.
        exit3: exits with status 3.
        parameters: prints ``{"n": n + 1, "evil": evil}`` as JSON from parameters n and evil.
        loop: prints ``started`` (unbuffered), then loops forever.
        flood: prints ``HEAD``, a line of 3,000,000 ``x``, then ``TAIL``.
        output: sets the value ``output`` to ``{"rows": [1, 2], "name": "é"}``.
        memory: allocates 2 GiB.
        unseen_spawn: starts ``true`` in a way the validator does not follow (through a library)
            and prints ``spawned``, or ``refused`` when the system call fails.
        read_files: prints ``data.txt`` (text) and a newline, then the hex of
            ``in/deep/blob.bin`` (see :data:`FILES_IN`) and a newline.
        write_out: writes :data:`REPORT_CSV` to ``out/report.csv``.
        link_out: makes ``out/passwd`` a link to ``/etc/passwd`` and writes ``ok`` to
            ``out/real.txt``.
        error: the name of the error ``fail`` raises, as stderr shows it.
    """

    hello: str
    fail: str
    exit3: str
    parameters: str
    loop: str
    flood: str
    output: str | None = None
    memory: str | None = None
    unseen_spawn: str | None = None
    read_files: str | None = None
    write_out: str | None = None
    link_out: str | None = None
    error: str = "boom"


SNIPPETS = {
    "python": Snippets(
        hello="print('hello')",
        fail="x = 1\nraise ValueError('boom')",
        exit3="import sys\nsys.exit(3)",
        parameters="print(json.dumps({'n': parameters['n'] + 1, 'evil': parameters['evil']}))",
        loop="print('started', flush=True)\nwhile True:\n    pass",
        flood="print('HEAD')\nprint('x' * 3000000)\nprint('TAIL')",
        output="output = {'rows': [1, 2], 'name': 'é'}",
        memory="hog = bytearray(2 * 1024 ** 3)",
        read_files=(
            "print(open('data.txt', encoding='utf-8').read())\n"
            "print(open('in/deep/blob.bin', 'rb').read().hex())"
        ),
        write_out="with open('out/report.csv', 'w') as f:\n    f.write('a,b\\n1,2\\n')",
        link_out=(
            "import os\nos.symlink('/etc/passwd', 'out/passwd')\n"
            "with open('out/real.txt', 'w') as f:\n    f.write('ok')"
        ),
        error="ValueError",
    ),
    "javascript": Snippets(
        hello="console.log('hello')",
        fail="throw new TypeError('boom')",
        exit3="process.exit(3)",
        parameters="console.log(JSON.stringify({n: parameters.n + 1, evil: parameters.evil}))",
        loop="console.log('started');\nwhile (true) {}",
        flood="console.log('HEAD');\nconsole.log('x'.repeat(3000000));\nconsole.log('TAIL');",
        read_files=(
            "const fs = require('fs');\nconsole.log(fs.readFileSync('data.txt', 'utf8'));\n"
            "console.log(fs.readFileSync('in/deep/blob.bin').toString('hex'));"
        ),
        write_out="require('fs').writeFileSync('out/report.csv', 'a,b\\n1,2\\n');",
        link_out=(
            "const fs = require('fs');\nfs.symlinkSync('/etc/passwd', 'out/passwd');\n"
            "fs.writeFileSync('out/real.txt', 'ok');"
        ),
        error="TypeError",
    ),
    "bash": Snippets(
        hello="echo hello",
        fail="echo 'boom: error' >&2\nexit 1",
        exit3="exit 3",
        parameters='printf \'{"n": %s, "evil": "%s"}\\n\' "$((PARAM_N + 1))" "$PARAM_EVIL"',
        loop="echo started\nwhile :; do :; done",
        flood="echo HEAD\nhead -c 3000000 /dev/zero | tr '\\0' x\necho\necho TAIL",
        read_files="cat data.txt\necho\nod -An -tx1 -v in/deep/blob.bin | tr -d ' \\n'\necho",
        write_out="printf 'a,b\\n1,2\\n' > out/report.csv",
        link_out="ln -s /etc/passwd out/passwd\nprintf ok > out/real.txt",
        error="error",
    ),
    "ruby": Snippets(
        hello="puts 'hello'",
        fail="x = 1\nraise ArgumentError, 'boom'",
        exit3="exit 3",
        parameters="puts JSON.generate({n: parameters['n'] + 1, evil: $parameters['evil']})",
        loop="puts 'started'\nloop {}",
        flood="puts 'HEAD'\nputs 'x' * 3000000\nputs 'TAIL'",
        output="output = {'rows' => [1, 2], 'name' => 'é'}",
        memory="hog = 'x' * (2 * 1024 ** 3)",
        read_files=(
            "puts File.read('data.txt', encoding: 'UTF-8')\n"
            "puts File.binread('in/deep/blob.bin').unpack1('H*')"
        ),
        write_out="File.write('out/report.csv', \"a,b\\n1,2\\n\")",
        link_out="File.symlink('/etc/passwd', 'out/passwd')\nFile.write('out/real.txt', 'ok')",
        unseen_spawn=(
            "begin\n  $stdout.class.read(['|', 'true'].join)\n  puts 'spawned'\n"
            "rescue SystemCallError\n  puts 'refused'\nend"
        ),
        error="ArgumentError",
    ),
}
"""The contract suite's code in every registered language (checked complete by a unit test)."""
