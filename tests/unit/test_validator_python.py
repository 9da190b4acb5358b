"""Hostile Python the validator must refuse under research, and ordinary Python it must accept.

Each hostile form ran under the research policy (validation as in strict) before these rules:
aliases, namespaces, the builtins, stdlib and library wrappers, private twins.
"""

from __future__ import annotations

import pytest

from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation, load_policy
from orchestrator.validator import CodeValidator

RESEARCH = load_policy("research").validation
DEVELOPMENT = load_policy("development").validation
VALIDATOR = CodeValidator()


def issues(code: str, rules: Validation = RESEARCH) -> list[ValidationIssue]:
    return VALIDATOR.validate(code, "python", rules)


def errors(code: str, rules: Validation = RESEARCH) -> set[str]:
    """Return the rules of the error findings."""
    return {i.rule for i in issues(code, rules) if i.severity == "error"}


# --------------------------------------------------------------------------- aliases


@pytest.mark.parametrize(
    "code",
    [
        'import os\no = os\no.system("id")',
        'import os\na, b = os, 1\na.system("id")',
        'import os\n[a, b] = [os, 1]\na.system("id")',
        'import os\na = b = os\nb.system("id")',
        'import os\nif (o := os):\n    o.system("id")',
        'import os\no = os if True else None\no.system("id")',
        'import os\no = os or None\no.system("id")',
        'import os\na = os\nb = a\nc = b\nc.system("id")',
        'import os\nc = b\nb = a\na = os\nc.system("id")',
        'import os as o\no.popen("id")',
        'import pathlib\npathlib.os.system("id")',
        'import shutil\nshutil.os.system("id")',
        'import shutil\no = shutil.os\no.system("id")',
        'from shutil import os as o\no.system("id")',
        'import tempfile\ntempfile._os.system("id")',
        'import posix\nposix.system("id")',
        'import os\nos.getcwd.__self__.system("id")',
        'x = __builtins__\nx.eval("1")',
        'print.__self__.eval("1")',
        'import os\nos.__getattribute__("system")("id")',
        'import pathlib\ngetattr(getattr(pathlib, "os"), "system")("id")',
        'import operator, shutil\noperator.attrgetter("os.system")(shutil)("id")',
    ],
)
def test_aliases_of_guarded_modules_reach_forbidden_calls(code: str) -> None:
    """A forbidden call is found through assignment aliases, unpacking and other modules."""
    assert "forbidden_call" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        'import os\nm = [os][0]\nm.system("id")',
        'import os\nd = {"m": os}\nd["m"].system("id")',
        'import os\ndef f():\n    return os\nf().system("id")',
        'import os\nclass A:\n    m = os\nA.m.system("id")',
        'import os\n(lambda m: m.system("id"))(os)',
        'import os\nfor m in (os,):\n    m.system("id")',
        'import os\nmatch os:\n    case m:\n        m.system("id")',
        "import os\nself.m = os",
        "import os\na, *b = os, 1",
        'import inspect, shutil\ndict(inspect.getmembers(shutil))["os"].system("id")',
        'import gc\n[m for m in gc.get_objects() if getattr(m, "__name__", "") == "os"]',
        "import http.client\nhttp.client.socket.socket()",
    ],
)
def test_guarded_modules_handed_on_are_module_alias_errors(code: str) -> None:
    """A module handed on as a value (or found at run time) cannot be followed: module_alias."""
    assert "module_alias" in errors(code)


def test_module_alias_message_names_the_module_and_the_place() -> None:
    """The message names the module, where it was handed on, and what to do instead."""
    [issue] = issues("import os\nf(os)")
    assert (issue.line, issue.rule) == (2, "module_alias")
    assert "the module 'os' is handed on as a value in 'f(os)'" in issue.message
    assert "use its attributes directly" in issue.message


# --------------------------------------------------------------------------- module tables, namespaces


@pytest.mark.parametrize(
    "code",
    [
        'import sys\nsys.modules["os"].system("id")',
        'import sys\nsys.modules.get("subprocess")',
        "import sys\nsys.modules.values()",
        'import sys\nm = sys.modules\nm["os"]',
        'import sys\nsys.meta_path[0].find_spec("os")',
    ],
)
def test_sys_modules_is_refused(code: str) -> None:
    """Any subscript, lookup or leak of sys.modules hands out modules past the import checks."""
    assert "module_alias" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        'import os\nos.__dict__["system"]("id")',
        'import os\nvars(os)["system"]("id")',
        'import os\nvars(os).get("system")("id")',
        'import pathlib\nvars(pathlib)["os"].system("id")',
        'import pathlib\npathlib.__dict__["os"].system("id")',
        '__builtins__.__dict__["eval"]("1")',
        'len.__self__.__dict__["exec"]("1")',
    ],
)
def test_module_namespaces_resolve_to_what_they_hold(code: str) -> None:
    """vars(m)[k] and m.__dict__[k] with a literal key are m.k, checked as such."""
    assert "forbidden_call" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        'import os\nn = "sys" + "tem"\ngetattr(os, n)("id")',
        'import pathlib\ngetattr(pathlib, "o" + "s").system("id")',
        'import os\nos.__getattribute__("sys" + "tem")("id")',
        'import os\nvars(os)["sys" + "tem"]("id")',
        'import os\nos.__dict__[name]("id")',
        "globals()[name]",
        'vars()["__buil" + "tins__"]',
        "import functools, shutil\nfunctools.reduce(getattr, ['os', 'system'], shutil)",
        "import operator\noperator.attrgetter(path)",
    ],
)
def test_computed_names_on_modules_and_namespaces_are_dynamic_calls(code: str) -> None:
    """A name computed at run time on a module, a namespace or via getattr as a value is refused."""
    assert "dynamic_call" in errors(code)


# --------------------------------------------------------------------------- builtins


@pytest.mark.parametrize(
    "code",
    [
        'globals()["__builtins__"]["eval"]("1")',
        'vars()["__builtins__"]',
        'locals()["__builtins__"]',
        'globals().get("__builtins__")',
        'g = globals()\ng["__builtins__"].eval("1")',
        'g = globals\ng()["__builtins__"].eval("1")',
        '(lambda: 0).__globals__["__builtins__"]["eval"]("1")',
        'import sys\nsys._getframe().f_globals["__builtins__"].eval("1")',
        "b = __builtins__\nf(b)",
        '[v for k, v in globals().items() if k == "__builtins__"]',
        "x = [globals()]",
    ],
)
def test_builtins_reached_through_namespaces_are_refused(code: str) -> None:
    """The builtins reached through globals(), vars(), locals() or a frame: builtins_access."""
    assert "builtins_access" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        '(lambda: 0).__builtins__["eval"]("1")',
        'import sys\nsys._getframe().f_builtins["exec"]("1")',
        'import builtins\nb = builtins\nb.exec("1")',
    ],
)
def test_builtins_reached_through_attributes_are_forbidden_calls(code: str) -> None:
    """f.__builtins__["eval"] and frame.f_builtins["exec"] are eval and exec."""
    assert "forbidden_call" in errors(code)


def test_builtins_access_message_says_why() -> None:
    """The message shows the expression and names what lives in the builtins."""
    [access] = [i for i in issues('vars()["__builtins__"]') if i.rule == "builtins_access"]
    assert access.message.startswith("\"vars()['__builtins__']\" reaches the builtins namespace")
    assert "eval, exec and __import__" in access.message


@pytest.mark.parametrize(
    "code",
    ['__loader__.load_module("posix")', '__builtins__.__loader__.load_module("posix")'],
)
def test_the_import_machinery_is_a_dynamic_import(code: str) -> None:
    """Loaders load modules by names given at run time: dynamic_import."""
    assert "dynamic_import" in errors(code)


# --------------------------------------------------------------------------- wrappers


@pytest.mark.parametrize(
    "code",
    [
        'import asyncio\nasyncio.create_subprocess_exec("id")',
        'import asyncio\nasyncio.create_subprocess_shell("id")',
        "from asyncio import create_subprocess_shell",
        'import asyncio\nloop = asyncio.get_event_loop()\nloop.subprocess_shell(None, "id")',
        'import asyncio\nasyncio.get_event_loop().subprocess_exec(None, "id")',
        'import pydoc\npydoc.pipepager("x", "id")',
        'import pydoc\npydoc.locate("os")',
        'import platform\nplatform.popen("id")',
        'import platform as p\np.popen("id")',
        "import timeit\ntimeit.timeit(\"__import__('os').system('id')\", number=1)",
        'import timeit\ntimeit.repeat(stmt="1", setup="import os")',
        'import timeit\ntimeit.Timer("x").timeit()',
        'import timeit\nt = timeit.timeit\nt("1")',
        'import timeit, functools\nfunctools.partial(timeit.timeit, "1")()',
        'import cProfile\ncProfile.run("1")',
        'import cProfile\ncProfile.Profile().run("1")',
        'from cProfile import Profile\np = Profile()\np.run("1")',
        'import profile\nprofile.runctx("1", {}, {})',
        "import pdb",
        "import trace",
        "import bdb",
        "import doctest",
        "import logging.config",
        "from logging import config",
        "import logging\nlogging.config.listen(9999)",
        "import sys\nsys.breakpointhook()",
        "help(len)",
        "from concurrent.futures import ProcessPoolExecutor",
    ],
)
def test_library_wrappers_of_forbidden_things_are_refused(code: str) -> None:
    """Functions and modules wrapping subprocess, exec or imports by name: forbidden_wrapper."""
    assert "forbidden_wrapper" in errors(code)


@pytest.mark.parametrize(
    "code",
    [
        'import pandas as pd\npd.read_pickle("/tmp/x")',
        'import pandas\npandas.read_pickle("/tmp/x")',
        "from pandas import read_pickle",
        'import pandas as pd\ndf = pd.DataFrame()\ndf.to_pickle("/tmp/x")',
        'anything.to_pickle("/tmp/x")',
        'import numpy as np\nnp.load("/tmp/x", allow_pickle=True)',
        'import numpy as np\nnp.load("/tmp/x", None, True)',
        'import numpy as np\nnp.load("/tmp/x", **options)',
        'import numpy as np\nkw = dict(allow_pickle=True)\nnp.load("/tmp/x", **kw)',
        'import numpy as np\nnp.load("/tmp/x", **{"allow_pickle": True})',
        "import numpy\nnumpy.lib.format.read_array(f, allow_pickle=1)",
    ],
)
def test_pickle_through_pandas_and_numpy_is_refused(code: str) -> None:
    """pandas and numpy unpickle for you; with pickle forbidden, that is refused too."""
    assert "forbidden_wrapper" in errors(code)


def test_wrapper_messages_say_what_they_wrap() -> None:
    """The message names the wrapper, what it does and the policy entry that forbids it."""
    [issue] = issues('import pandas as pd\npd.read_pickle("x")')
    assert issue.message == (
        "use of 'pandas.read_pickle' (as 'pd.read_pickle') is forbidden by the policy: "
        "it unpickles data (forbidden_imports lists 'pickle')"
    )
    [timeit] = issues('import timeit\ntimeit.timeit("1 + 1")')
    assert "compiles it as code, as exec does" in timeit.message
    assert "lambda" in timeit.message


def test_wrappers_follow_the_policy() -> None:
    """A wrapper is refused only when what it wraps is forbidden."""
    only_pickle = Validation(forbidden_imports=("pickle",))
    assert errors('import pandas as pd\npd.read_pickle("x")', only_pickle) == {"forbidden_wrapper"}
    assert errors('import timeit\ntimeit.timeit("1")', only_pickle) == set()
    assert errors("import pdb", only_pickle) == set()
    assert errors('import pandas as pd\npd.read_pickle("x")', Validation()) == set()


# --------------------------------------------------------------------------- private twins


@pytest.mark.parametrize(
    ("code", "public"),
    [
        ("import _socket", "socket"),
        ("from _socket import socket", "socket"),
        ("import _ctypes", "ctypes"),
        ("import _posixsubprocess", "subprocess"),
        ("import _multiprocessing", "multiprocessing"),
        ("import _posixshmem", "multiprocessing"),
        ("import _ssl", "ssl"),
        ("import _pickle", "pickle"),
        ("import _imp", "importlib"),
        ("import _frozen_importlib", "importlib"),
    ],
)
def test_private_twins_of_forbidden_modules_are_forbidden(code: str, public: str) -> None:
    """Forbidding M forbids _M, and the known twins (_posixshmem is multiprocessing)."""
    public_only = Validation(forbidden_imports=(public, "unrelated"))
    [issue] = issues(code, public_only)
    assert issue.rule == "forbidden_import"
    assert repr(public) in issue.message


def test_private_twin_rule_follows_the_policy() -> None:
    """_socket is refused because socket is; with socket allowed, so is _socket."""
    assert errors("import _socket", Validation(forbidden_imports=("ssl",))) == set()
    message = issues("import _socket")[0].message
    assert message == (
        "import of '_socket' is forbidden by the policy: it stands for 'socket' "
        "(forbidden_imports lists 'socket')"
    )


def test_asyncio_accelerator_is_not_a_twin_of_asyncio_subprocess() -> None:
    """_asyncio holds Future and Task only: it is not refused for asyncio.subprocess."""
    assert issues("import _asyncio") == []


# --------------------------------------------------------------------------- no false positives

ORDINARY = '''\
"""A typical analysis."""
import csv
import json
import logging
import math
import os
import re
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
DATA = Path(os.environ.get("DATA_DIR", "/project/data"))
HOME = os.environ["HOME"] if "HOME" in os.environ else os.getenv("USER")


@dataclass
class Stats:
    name: str
    values: list[float] = field(default_factory=list)

    def mean(self) -> float:
        return statistics.mean(self.values) if self.values else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean(), **vars(self)}

    def on(self, event: str) -> Any:
        return getattr(self, "on_" + event)()


def main() -> int:
    files = sorted(p for p in DATA.glob("*.csv") if p.is_file())
    files += [Path(os.path.join(DATA, f)) for f in os.listdir(DATA) if f.endswith(".json")]
    df = pd.concat([pd.read_csv(p) for p in files]) if files else pd.DataFrame({"x": [1, 2]})
    df["y"] = np.sqrt(df["x"].astype(float))
    df = df[df["y"] > 0].dropna()
    summary = df.describe().to_dict()
    arr = np.linalg.inv(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.save("/tmp/a.npy", arr)
    back = np.load("/tmp/a.npy", allow_pickle=False)
    counts = Counter(re.sub(r"\\s+", " ", str(v)) for v in df["x"])
    groups = defaultdict(list)
    for row in df.itertuples():
        groups[row.x % 2].append(getattr(row, "y"))
    stats = Stats("x", df["x"].tolist())
    print(f"{stats.name}: {stats.mean():.3f}", json.dumps(summary, default=str), counts, back)
    Path("/tmp/notes.txt").write_text("hello")
    with open("/tmp/x.csv", "w", newline="") as fh:
        csv.writer(fh).writerow(["a", "b"])
    print("{x}".format(**locals()), sys.version_info, df.query("x > 1"), groups)
    params = globals().get("parameters") or {}
    return 0 if params is not None else 1


if __name__ == "__main__":
    sys.exit(main())
'''


@pytest.mark.parametrize("policy", ["strict", "research", "development"])
def test_ordinary_data_science_python_has_no_findings(policy: str) -> None:
    """numpy, pandas, os.path, os.environ, pathlib, classes, f-strings pass every shipped policy."""
    assert issues(ORDINARY, load_policy(policy).validation) == []


@pytest.mark.parametrize(
    "code",
    [
        "import timeit\n\ndef work():\n    return 1\n\ntimeit.timeit(work, number=3)",
        "import timeit\ntimeit.timeit(lambda: sum(range(9)), number=3)",
        "import timeit, functools\ntimeit.repeat(functools.partial(print, 1), number=1)",
        "import math\nf = getattr(math, 'sqrt')\nprint(f(4))",
        "import math\nprint(math, type(math), isinstance(math, object), hasattr(math, 'pi'))",
        "import asyncio\n\nasync def f():\n    await asyncio.sleep(0)\n\nasyncio.run(f())",
        "import operator\nkey = operator.attrgetter('name')\nget = operator.itemgetter(1)",
        "import os\nx = os.environ.get('X')\nos.makedirs('/tmp/a', exist_ok=True)",
        "globals()['answer'] = 42\nprint('answer' in globals(), globals().get('answer'))",
        "import sys\nprint('numpy' in sys.modules)",
        "class Config:\n    def __init__(self):\n        self.__dict__.update({'a': 1})",
        "m = {'a': 1}\nprint(m['a'], vars(object()) if False else None)",
        "from operator import add\nimport functools\nprint(functools.reduce(add, [1, 2]))",
    ],
)
def test_ordinary_python_idioms_are_not_findings(code: str) -> None:
    """Functions to timeit, getattr with literals, globals() lookups and the like pass."""
    assert issues(code) == []


@pytest.mark.parametrize(
    "code",
    [
        "import os\nf(os)",
        "import sys\nsys.modules['os']",
        "import numpy as np\nprint(getattr(np, name))",
        "import inspect\ninspect.getmembers(x)",
    ],
)
def test_development_does_not_guard_modules(code: str) -> None:
    """development forbids only breakpoint: modules handed on are not its concern."""
    assert errors(code, DEVELOPMENT) == set()


@pytest.mark.parametrize(
    "code",
    [
        'globals()["__builtins__"]',
        'vars()["__buil" + "tins__"]',
        "import sys\nsys.breakpointhook()",
    ],
)
def test_development_still_guards_the_builtins(code: str) -> None:
    """development forbids breakpoint, which lives in the builtins: their routes are refused."""
    assert errors(code, DEVELOPMENT)


def test_nothing_forbidden_means_no_findings() -> None:
    """A policy that forbids nothing refuses no alias, namespace or wrapper."""
    code = (
        "import os, sys, pandas as pd\nf(os)\nsys.modules['os']\nglobals()[k]\n"
        "pd.read_pickle('x')\nimport _socket\nhelp(len)"
    )
    assert issues(code, Validation()) == []


def test_reassigning_an_alias_in_a_loop_is_refused_not_followed_forever() -> None:
    """A name re-bound through itself beyond what the validator follows is refused, quickly."""
    code = "import shutil\na = shutil\na = a.x\na = a.y\na = a.os\na.system('id')"
    assert errors(code) & {"module_alias", "forbidden_call"}


def test_long_alias_chains_are_followed() -> None:
    """Two thousand assignments in a row still resolve to the module they started at."""
    chain = "\n".join(f"a{i + 1} = a{i}" for i in range(2000))
    assert "forbidden_call" in errors(f"import os\na0 = os\n{chain}\na2000.system('id')")
