"""Embeddings, offline: WordLlama's ``l2_supercat`` model at 256 dimensions, whose
weights and tokenizer ship inside the ``wordllama`` wheel (no download, no
PyTorch). The model is loaded once per process, on first use.

Vectors are unit length (so cosine similarity is a dot product) and stored as
little-endian float32 bytes (:func:`vector_bytes`, :func:`vectors_from`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

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


def texts_embed(texts: list[str]) -> np.ndarray:
    """Unit-length float32 vectors of ``texts``, one row each (``DIMENSIONS`` wide)."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    vectors = np.asarray(_loaded().embed(texts), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


def vector_bytes(vector: np.ndarray) -> bytes:
    """``vector`` as little-endian float32 bytes (``Chunk.embedding``)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def vectors_from(blobs: list[bytes | memoryview]) -> np.ndarray:
    """The vectors stored as ``blobs`` (:func:`vector_bytes`), one row each."""
    if not blobs:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    return np.frombuffer(b"".join(bytes(b) for b in blobs), dtype="<f4").reshape(
        len(blobs), DIMENSIONS
    )
