"""The semantic layer's model (all-MiniLM-L6-v2) alone on this machine, as the cache service runs it
(o1sidecar.cachesvc.embedding: ONNX Runtime, float32, one thread) and as it could: on two threads, and
with int8 weights from ONNX Runtime's dynamic quantisation. For each: time per question embedded alone
and in a batch of four, the least cosine between its vectors and the service's, and lookups arriving
at a fixed rate to one worker that embeds up to four waiting at a time (as the service does): the
time from arrival to vector, p50 and p99.

Not part of any install, and needs only the extra `semantic` (which `make test` installs):

    .venv/bin/python hack/embedding-runtimes.py
"""

import os
import platform
import queue
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from o1sidecar.cachesvc.embedding import Embedder, minilm_graph, minilm_weights, model_dir

Embed = Callable[[Sequence[str]], np.ndarray]


def standalone_model() -> onnx.ModelProto:
    """The service's graph with its weights inside, as quantisation needs them."""
    import json

    directory = model_dir()
    weights = minilm_weights(directory)
    config = json.loads((directory / "config.json").read_text())
    model = onnx.load_from_string(
        minilm_graph(config, {name: value.shape for name, value in weights.items()})
    )
    for tensor in model.graph.initializer:
        if tensor.name in weights:
            tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    return model


def ort_embedder(service: Embedder, model: str, threads: int) -> Embed:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def embed(texts: Sequence[str]) -> np.ndarray:
        encoded = service.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encoded], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], np.int64),
        }
        return np.asarray(session.run(None, feeds)[0])

    return embed


WORDS = "how do I rotate an API key for the billing service in production today please quickly".split()


def question(i: int) -> str:
    return " ".join(random.Random(i).sample(WORDS, 9)) + "?"


def per_question_ms(embed: Embed, batch: int, calls: int = 200) -> float:
    batches = [[question(i * batch + j) for j in range(batch)] for i in range(calls)]
    for texts in batches[:10]:
        embed(texts)
    start = time.perf_counter()
    for texts in batches:
        embed(texts)
    return (time.perf_counter() - start) / calls / batch * 1000


def at_rate(embed: Embed, rate: float, seconds: float = 20.0, most: int = 4) -> tuple[float, float]:
    """Poisson arrivals at ``rate`` a second; one worker embeds up to ``most`` waiting at a time."""
    waiting: queue.Queue[tuple[int, float] | None] = queue.Queue()
    latencies: list[float] = []

    def worker() -> None:
        while (first := waiting.get()) is not None:
            batch = [first]
            while len(batch) < most and not waiting.empty():
                item = waiting.get()
                if item is None:
                    waiting.put(None)
                    break
                batch.append(item)
            embed([question(i) for i, _ in batch])
            done = time.perf_counter()
            latencies.extend(done - arrived for _, arrived in batch)

    thread = threading.Thread(target=worker)
    thread.start()
    rng, due, i = random.Random(7), time.perf_counter(), 0
    end = due + seconds
    while due < end:
        due += rng.expovariate(rate)
        time.sleep(max(0.0, due - time.perf_counter()))
        waiting.put((i, time.perf_counter()))
        i += 1
    waiting.put(None)
    thread.join()
    latencies.sort()
    return latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000


def main() -> None:
    service = Embedder()
    with tempfile.TemporaryDirectory() as scratch:
        plain, quantised = os.path.join(scratch, "fp32.onnx"), os.path.join(scratch, "int8.onnx")
        onnx.save(standalone_model(), plain)
        quantize_dynamic(plain, quantised, weight_type=QuantType.QInt8)
        runtimes: dict[str, Embed] = {
            "ONNX Runtime fp32, 1 thread (the service)": service.embed,
            "ONNX Runtime fp32, 2 threads": ort_embedder(service, plain, 2),
            "ONNX Runtime int8, 1 thread": ort_embedder(service, quantised, 1),
        }
    cores, python = os.cpu_count(), platform.python_version()
    print(f"{platform.machine()}, {cores} cores, Python {python}, onnxruntime {ort.__version__}")
    probe = [question(i) for i in range(64)]
    reference = service.embed(probe)
    columns = ["ms/question alone", "ms/question in 4s", "least cosine to the service's"]
    columns += [f"p50 / p99 ms at {rate}/s" for rate in (50, 100)]
    print("| runtime | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for name, embed in runtimes.items():
        cosine = float((embed(probe) * reference).sum(axis=1).min())
        alone, four = per_question_ms(embed, 1), per_question_ms(embed, 4)
        rates = " | ".join("{:.1f} / {:.1f}".format(*at_rate(embed, rate)) for rate in (50, 100))
        print(f"| {name} | {alone:.2f} | {four:.2f} | {cosine:.4f} | {rates} |")


if __name__ == "__main__":
    main()
