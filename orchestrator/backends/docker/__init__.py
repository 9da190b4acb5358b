"""The Docker backend, in parts: see :mod:`.backend` for how they fit together.

``backend`` (the coordinator), ``compile`` (policy -> container settings, pure), ``engine`` (the
one engine-client interface), ``blueprints``, ``live``, ``drive``, ``sandbox``,
``egress``, ``watchdog`` (and its process, ``watcher``), ``owners`` and ``errors``.
"""

from orchestrator.backends.docker.backend import DockerBackend
from orchestrator.backends.docker.compile import (
    IMAGE_PROTOCOL_LABEL,
    EgressRoute,
    choose_runtime,
    compile_docker,
)
from orchestrator.backends.docker.engine import DockerEngine, Engine

__all__ = [
    "IMAGE_PROTOCOL_LABEL",
    "DockerBackend",
    "DockerEngine",
    "EgressRoute",
    "Engine",
    "choose_runtime",
    "compile_docker",
]
