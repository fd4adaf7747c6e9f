"""Embeddings. By default offline: WordLlama's ``l2_supercat`` model at 256
dimensions, whose weights and tokenizer ship inside the ``wordllama`` wheel (no
download, no PyTorch), loaded once per process on first use. A deployment may
name a ``ModelConfig`` of kind embedding instead (``TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL``);
``conversations`` answers :data:`knowledge.signals.embedder_query` with an
:class:`Embedder` that calls it through litellm, so this app never imports it.
:func:`embedder_current` is the one place that decides which model embeds.

Vectors are unit length (so cosine similarity is a dot product), of the model's
width, and stored as little-endian float32 bytes (:func:`vector_bytes`,
:func:`vectors_from`); each chunk stores the name of the model that embedded it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from knowledge.errors import EmbeddingFailed
from knowledge.signals import embedder_query

#: The shipped model and its width.
MODEL = "wordllama/l2_supercat"
DIMENSIONS = 256

_lock = threading.Lock()
_model: Any = None


def _loaded() -> Any:
    global _model
    with _lock:
        if _model is None:
            # Deliberately lazy: wordllama reads 16 MB of weights; a web process that
            # never searches should not pay for it.
            import wordllama

            # The package's own folder holds ``weights/`` and ``tokenizers/``, the
            # layout wordllama looks for under a cache folder; with downloads off it
            # never reaches for the network.
            _model = wordllama.WordLlama.load(
                config="l2_supercat",
                dim=DIMENSIONS,
                cache_dir=Path(wordllama.__file__).parent,
                disable_download=True,
            )
        return _model


def vectors_unit(vectors: Any) -> np.ndarray:
    """``vectors`` (one row each, any width) as float32 rows of length 1 (a zero row
    stays zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return array / norms


def texts_embed(texts: list[str]) -> np.ndarray:
    """Unit-length float32 vectors of ``texts`` by the offline model, one row each
    (``DIMENSIONS`` wide)."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    return vectors_unit(_loaded().embed(texts))


class Embedder(Protocol):
    """A model that turns text into vectors. ``name`` is stored on every chunk it
    embeds (``Chunk.embedding_model``): vectors of different names are never compared."""

    name: str

    def embed(self, texts: list[str], *, user: Any, target_type: str, target_id: int) -> np.ndarray:
        """Unit-length float32 vectors of ``texts``, one row each, of the model's width.
        ``user`` is charged for the call (a paid model), on ``target_type`` /
        ``target_id`` (what the audit trail names: ``"document"``, ``"user"``).
        Raises ``EmbeddingFailed`` with a message for the user."""
        ...


class OfflineEmbedder:
    """The offline model (:func:`texts_embed`): free, nothing charged."""

    name = MODEL

    def embed(self, texts: list[str], *, user: Any, target_type: str, target_id: int) -> np.ndarray:
        return texts_embed(texts)


def embedder_current() -> Embedder:
    """The deployment's embedding model: the one a receiver of
    ``signals.embedder_query`` returns (``conversations``, for the ``ModelConfig``
    named by ``TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL``), else the offline model.
    Raises ``EmbeddingFailed`` when the named model cannot be used (missing,
    disabled, not of kind embedding)."""
    for _receiver, answer in embedder_query.send(sender=None):
        if answer is not None:
            return cast("Embedder", answer)
    return OfflineEmbedder()


def vector_bytes(vector: np.ndarray) -> bytes:
    """``vector`` as little-endian float32 bytes (``Chunk.embedding``)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def vectors_from(blobs: list[bytes | memoryview]) -> np.ndarray:
    """The vectors stored as ``blobs`` (:func:`vector_bytes`), one row each; their
    width is read from the first (all are of one model, so of one width). Raises
    ``EmbeddingFailed`` when they are not all of that width."""
    if not blobs:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    joined = b"".join(bytes(b) for b in blobs)
    width = len(blobs[0]) // 4
    if not width or len(joined) != width * 4 * len(blobs):
        raise EmbeddingFailed("Stored vectors of one model differ in width; re-embed them.")
    return np.frombuffer(joined, dtype="<f4").reshape(len(blobs), width)
