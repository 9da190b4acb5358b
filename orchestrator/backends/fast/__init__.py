"""The fast mode: a fresh bubblewrap sandbox per run over the image's exported root filesystem."""

from orchestrator.backends.fast.backend import FastBackend
from orchestrator.backends.fast.host import host_reason

__all__ = ["FastBackend", "host_reason"]
