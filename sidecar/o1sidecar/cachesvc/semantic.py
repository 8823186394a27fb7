"""The semantic layer's index (L4), in the cache service: per scope, the questions whose answers L3
holds, as unit vectors. A lookup embeds the question, takes the nearest questions of the same scope at
or above the threshold, and returns the first whose entry is still live and that the check after a
match (``guard.conflict``) lets through.

A scope is a hash the sidecar makes of everything but the question (model, system prompt, earlier
turns, tools, the parameters that change the answer): only questions asked in the same setting can
share an answer. The index lives in memory, bounded by ``max_entries`` (the oldest go first); the
service also keeps each question and its vector in L3's file with its answer, and after a restart
``restore`` puts them back without embedding anything.

Embedding is the whole cost of the layer (about 5 ms of CPU a question), so the index spends it as
little as it can: questions waiting together are embedded in one batch (``candidates_many``: a batch
of four costs about twice one question, not four times), a question of a scope with nothing indexed
is not embedded at all, and the vector a lookup made is kept (``VECTOR_MEMO`` questions) for the
indexing of the same question, which follows its miss.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache

from o1sidecar.cachesvc.embedding import DIMENSIONS, F32, MAX_TOKENS, MODEL, Embedder
from o1sidecar.cachesvc.guard import conflict
from o1sidecar.cachesvc.store import Question

CANDIDATES = 8  # nearest questions checked, in order, before a lookup is a miss
VECTOR_MEMO = 4096  # vectors of recent questions, for the indexing that follows a lookup's miss (6 MB)


@dataclass
class _Scope:
    """Rows of vectors in a buffer that doubles when full (an insert copies nothing, amortised); a
    removed row is marked dead and the rows are compacted once half are dead."""

    keys: list[str | None] = field(default_factory=list)  # None: a dead row
    texts: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # key -> its live row
    buffer: F32 = field(default_factory=lambda: np.zeros((16, DIMENSIONS), dtype=np.float32))

    @property
    def vectors(self) -> F32:
        return self.buffer[: len(self.keys)]

    def add(self, key: str, text: str, vector: F32) -> None:
        self.remove(key)
        row = len(self.keys)
        if row == len(self.buffer):
            grown = np.zeros((max(16, 2 * row), DIMENSIONS), dtype=np.float32)
            grown[:row] = self.buffer
            self.buffer = grown
        self.buffer[row] = vector
        self.rows[key] = row
        self.keys.append(key)
        self.texts.append(text)

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        self.keys[row] = None
        self.buffer[row] = 0.0  # similarity 0 to anything: never a candidate
        if len(self.rows) * 2 < len(self.keys):
            live = [i for i, k in enumerate(self.keys) if k is not None]
            self.buffer = np.ascontiguousarray(self.buffer[live])
            self.keys = [self.keys[i] for i in live]
            self.texts = [self.texts[i] for i in live]
            self.rows = {k: i for i, k in enumerate(self.keys) if k is not None}


@dataclass(frozen=True)
class Candidate:
    key: str  # the L3 key of the answer
    similarity: float


class SemanticIndex:
    """Thread-safe: questions are embedded outside the lock (the model lets go of the GIL), so a lookup
    never waits behind another question's embedding, only behind the short search or insert."""

    def __init__(
        self,
        embedder: Embedder,
        threshold: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.embedder = embedder
        self.model = MODEL  # what made the vectors: kept with them in L3's file
        self.threshold = threshold
        self.max_entries = max_entries
        self._clock = clock
        self._scopes: dict[str, _Scope] = {}
        self._lock = threading.Lock()
        self._expires: OrderedDict[tuple[str, str], float] = OrderedDict()  # (scope, key), oldest first
        self._vectors: LRUCache[str, F32] = LRUCache(VECTOR_MEMO)  # question -> its vector
        self.embedded = 0  # questions embedded (the memo's and the empty scopes' savings are the rest)

    @property
    def entries(self) -> int:
        return len(self._expires)  # (a racy read is fine for a gauge)

    def fits(self, text: str) -> bool:
        """Whether the model sees all of ``text`` (a longer one is cut at 256 tokens, and two questions
        that differ only after the cut would match)."""
        return 0 < len(self.embedder.tokenizer.encode(text).ids) < MAX_TOKENS

    def add(self, scope: str, key: str, text: str, ttl_s: float) -> F32 | None:
        """Index ``text`` as the question whose answer is L3's ``key``: its vector, or None if it cannot
        be (too long)."""
        if not self.fits(text):
            return None
        [vector] = self._vectors_of([text])
        with self._lock:
            self._insert(scope, key, text, vector, self._clock() + ttl_s)
        return vector

    def restore(self, questions: Iterable[Question]) -> int:
        """Put back questions kept in L3's file (oldest first), as they were embedded: how many."""
        now, restored = self._clock(), 0
        with self._lock:
            for question in questions:
                vector = np.frombuffer(question.vector, dtype=np.float32)
                if question.expires > now and vector.shape == (DIMENSIONS,):
                    self._insert(question.scope, question.key, question.text, vector, question.expires)
                    restored += 1
        return restored

    def _insert(self, scope: str, key: str, text: str, vector: F32, expires: float) -> None:
        self._scopes.setdefault(scope, _Scope()).add(key, text, vector)
        self._expires.pop((scope, key), None)
        self._expires[(scope, key)] = expires
        while len(self._expires) > self.max_entries:
            (old_scope, old_key), _ = self._expires.popitem(last=False)
            self._drop(old_scope, old_key)

    def candidates(self, scope: str, text: str) -> list[Candidate]:
        """The live questions of ``scope`` at or above the threshold that the check lets through, nearest
        first (at most ``CANDIDATES`` looked at)."""
        return self.candidates_many([(scope, text)])[0]

    def candidates_many(self, questions: Sequence[tuple[str, str]]) -> list[list[Candidate]]:
        """``candidates`` of each (scope, text), the questions that need it embedded in one batch."""
        asked = [i for i, (scope, text) in enumerate(questions) if scope in self._scopes and self.fits(text)]
        vectors = self._vectors_of([questions[i][1] for i in asked])
        found: list[list[Candidate]] = [[] for _ in questions]
        for i, vector in zip(asked, vectors, strict=True):
            found[i] = self._search(*questions[i], vector)
        return found

    def _vectors_of(self, texts: Sequence[str]) -> list[F32]:
        """The vectors of ``texts``: from the memo, the others embedded together (outside the lock)."""
        with self._lock:
            known = {text: self._vectors[text] for text in texts if text in self._vectors}
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            for text, vector in zip(missing, self.embedder.embed(missing), strict=True):
                known[text] = vector
            with self._lock:
                self.embedded += len(missing)
                for text in missing:
                    self._vectors[text] = known[text]
        return [known[text] for text in texts]

    def _search(self, scope: str, text: str, vector: F32) -> list[Candidate]:
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                return []
            similarities = index.vectors @ vector
            order = np.argsort(-similarities)[:CANDIDATES]
            near = [(float(similarities[i]), index.keys[i], index.texts[i]) for i in order]
            expires = {key: self._expires.get((scope, key), 0.0) for _, key, _ in near if key is not None}
        now = self._clock()
        found = []
        for similarity, key, other in near:
            if similarity < self.threshold:
                break
            if key is None or expires[key] <= now or conflict(text, other) is not None:
                continue
            found.append(Candidate(key, similarity))
        return found

    def forget(self, scope: str, key: str) -> None:
        """Drop an entry whose answer L3 no longer holds."""
        with self._lock:
            self._expires.pop((scope, key), None)
            self._drop(scope, key)

    def _drop(self, scope: str, key: str) -> None:
        index = self._scopes.get(scope)
        if index is not None:
            index.remove(key)
            if not index.rows:
                del self._scopes[scope]
