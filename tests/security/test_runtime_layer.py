"""The run-time policy layer under hostile code that the static validator lets through.

These run with validation enforced (strict's rules): each snippet passes the static check (at
most an `introspection` warning) and reaches something the policy forbids by a route no reader
can follow. Besides the host's state, each case requires a `policy:` violation: the layer inside
the sandbox refused it.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Sec

pytestmark = pytest.mark.security

PYTHON = {
    # subprocess.Popen, found among object's subclasses once pandas has imported subprocess
    "process": "import pandas\n@ATTEMPT@\n"
    "P = [c for c in object.__subclasses__() if c.__name__ == 'Popen'][0]\n"
    "print(P(['id', '-u'], stdout=-1).communicate())",
    # ctypes.CDLL, there once numpy has imported ctypes
    "native": "import numpy\n@ATTEMPT@\n"
    "C = [c for c in object.__subclasses__() if c.__name__ == 'CDLL'][0]\n"
    "print(C('libc.so.6').getpid())",
    # _socket.socket, there once pandas has imported socket
    "socket": "import pandas\n@ATTEMPT@\n"
    "S = [c for c in object.__subclasses__() if c.__name__ == 'socket'][0]\n"
    "s = S(2, 1)\ns.connect(('@TCPHOST@', @TCPPORT@))",
}
JAVASCRIPT = {
    # the Function constructor reached by a computed name: `process` without a `require`
    "binding": "@ATTEMPT@\nconst k = ['constr', 'uctor'].join('');\n"
    "const F = (() => 0)[k];\n"
    "F('return process')().binding('spawn_sync');",
    "loader": "@ATTEMPT@\nconst k = ['constr', 'uctor'].join('');\n"
    "const F = (() => 0)[k];\n"
    "const p = F('return process')();\n"
    "const load = ['_lo', 'ad'].join('');\n"
    "const M = p.mainModule[k];\n"
    "M[load]('child_process').execSync('id');",
}


@pytest.mark.parametrize("what", sorted(PYTHON))
def test_python_past_the_validator(sec: Sec, what: str) -> None:
    """Python that the static check cannot follow is refused inside the sandbox, and reported."""
    sec.only("docker-runc", "docker-runsc", "fast")  # pandas and numpy: in the image only
    code = PYTHON[what].replace("@TCPHOST@", "127.0.0.1").replace("@TCPPORT@", "9")
    result = sec.run(code, "python", policy=sec.policy(validation={"enforce": True}))
    categories = [v["category"] for v in result["violation_details"]]
    sec.expect("policy" in categories, f"no policy violation: {result['violations']}")
    sec.expect(not result["success"], "the forbidden call went through")
    sec.finish()


@pytest.mark.parametrize("what", sorted(JAVASCRIPT))
def test_javascript_past_the_validator(sec: Sec, what: str) -> None:
    """JavaScript that reaches process without require is refused at the loader, and reported."""
    sec.only("docker-runc", "docker-runsc", "fast", "srt")
    result = sec.run(
        JAVASCRIPT[what], "javascript", policy=sec.policy(validation={"enforce": True})
    )
    categories = [v["category"] for v in result["violation_details"]]
    sec.expect("policy" in categories, f"no policy violation: {result['violations']}")
    sec.expect("ERR_ACCESS_DENIED" in result["stderr"], "the refusal did not reach the code")
    sec.finish()


RUBY = {
    # Kernel reached as a value, a command path built at run time: the static check cannot tell
    # this `open` from File's.
    "open": "@ATTEMPT@\nk = method(:puts).owner\ncommand = ['|', 'id -u'].join\n"
    'k.open(command) { |f| puts "ran: #{f.read}" }\n',
    # IO reached as $stdout's class: its read runs a "|" path
    "io-read": "@ATTEMPT@\nio = $stdout.class\nputs \"ran: #{io.read(['|', 'id -u'].join)}\"\n",
}


@pytest.mark.parametrize("what", sorted(RUBY))
def test_ruby_past_the_validator(sec: Sec, what: str) -> None:
    """Ruby that starts a process by a route no reader follows is refused inside, and reported."""
    sec.only("docker-runc", "docker-runsc", "fast", "srt")
    result = sec.run(RUBY[what], "ruby", policy=sec.policy(validation={"enforce": True}))
    categories = [v["category"] for v in result["violation_details"]]
    sec.expect("policy" in categories, f"no policy violation: {result['violations']}")
    sec.expect("ran:" not in result["stdout"], f"the process ran: {result['stdout']!r}")
    sec.expect("Operation not permitted" in result["stderr"], "the refusal did not reach the code")
    sec.finish()
