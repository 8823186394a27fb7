"""``o1pool cache-eval``: how well the semantic cache layer tells paraphrases from near misses.

The pair set is generated here, deterministically, and ships with the package: paraphrases of how-to
questions (should share an answer) and near misses that differ only in a negation, a number, a name
or a date (must not). Each pair is embedded with all-MiniLM-L6-v2 (``cachesvc.embedding``) and judged
at thresholds 0.90-0.98, with and without the check after the match (``cachesvc.guard``): recall on
paraphrases, false hits on near misses, precision. Targets at the default threshold (0.95): no false
hit, at least 70% recall.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
DEFAULT_THRESHOLD = 0.95

TASKS = (
    "reset my password",
    "rotate an API key",
    "deploy a Helm chart",
    "rename a git branch",
    "merge two dictionaries in Python",
    "read a CSV file with pandas",
    "center a div with CSS",
    "undo the last git commit",
    "create a Python virtual environment",
    "install Redis on Debian",
    "scale a Kubernetes deployment",
    "write a unit test for an async function",
    "profile a slow Python script",
    "schedule a cron job",
    "parse a date string in JavaScript",
    "set up SSH keys for GitHub",
    "free disk space on a Linux server",
    "find which process uses a port",
    "export a PostgreSQL table to CSV",
    "add a column to a SQL table",
)
PARAPHRASES = (
    "How can I {}?",
    "What is the way to {}?",
    "What are the steps to {}?",
    "Explain how to {}.",
    "Could you tell me how to {}?",
)
COMPANIES = ("Microsoft", "Apple", "Google", "Amazon", "Netflix", "Tesla", "Intel", "Oracle")
COUNTRIES = ("France", "Spain", "Italy", "Germany", "Portugal", "Austria", "Poland", "Norway")
PEOPLE = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie", "Isaac Newton", "Nikola Tesla")
MONTHS = ("January", "March", "May", "July", "September", "November")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    kind: str  # "paraphrase", or what tells a near miss apart: negation, number, name, date

    @property
    def should_match(self) -> bool:
        return self.kind == "paraphrase"


def pairs() -> list[Pair]:
    """The shipped set: 100 paraphrases of how-to questions and 20 of questions naming a company, a
    country or a year (which the check must let through), and 120 near misses (30 of each kind)."""
    out = [Pair(f"How do I {t}?", p.format(t), "paraphrase") for t in TASKS for p in PARAPHRASES]
    out += [Pair(f"Who founded {c}?", f"Who was the founder of {c}?", "paraphrase") for c in COMPANIES]
    out += [
        Pair(f"What is the capital of {c}?", f"What is the capital city of {c}?", "paraphrase")
        for c in COUNTRIES
    ]
    out += [
        Pair(f"What happened in {y}?", f"What events took place in {y}?", "paraphrase")
        for y in (1969, 1989, 2001, 2008)
    ]
    for t in TASKS[:15]:
        out.append(Pair(f"Why can I {t}?", f"Why can't I {t}?", "negation"))
        out.append(Pair(f"Is it safe to {t}?", f"Is it not safe to {t}?", "negation"))
    for i in range(10):
        a, b = 10 + 5 * i, 200 + 50 * i
        out.append(Pair(f"What is {a}% of {b}?", f"What is {a}% of {b + 50}?", "number"))
        out.append(
            Pair(
                f"How many seconds are in {i + 2} hours?", f"How many seconds are in {i + 3} hours?", "number"
            )
        )
        out.append(
            Pair(f"Convert {a} miles to kilometres.", f"Convert {a * 2} miles to kilometres.", "number")
        )
    for i in range(len(COMPANIES)):
        other = COMPANIES[(i + 1) % len(COMPANIES)]
        out.append(Pair(f"Who founded {COMPANIES[i]}?", f"Who founded {other}?", "name"))
        out.append(
            Pair(
                f"What is the capital of {COUNTRIES[i]}?",
                f"What is the capital of {COUNTRIES[(i + 1) % 8]}?",
                "name",
            )
        )
    for i in range(len(PEOPLE)):
        other = PEOPLE[(i + 1) % len(PEOPLE)]
        out.append(Pair(f"When was {PEOPLE[i]} born?", f"When was {other} born?", "name"))
        out.append(Pair(f"What is {PEOPLE[i]} best known for?", f"What is {other} best known for?", "name"))
    out.append(Pair("Who is the CEO of Microsoft?", "Who is the CEO of Apple?", "name"))
    out.append(
        Pair("Summarise the latest news about Google.", "Summarise the latest news about Amazon.", "name")
    )
    for i in range(10):
        year = 1960 + 3 * i
        out.append(Pair(f"What happened in {year}?", f"What happened in {year + 1}?", "date"))
        month, other = MONTHS[i % 6], MONTHS[(i + 1) % 6]
        out.append(
            Pair(f"What holidays are there in {month}?", f"What holidays are there in {other}?", "date")
        )
        day, next_day = WEEKDAYS[i % 5], WEEKDAYS[(i + 1) % 5]
        out.append(
            Pair(
                f"What is the weather forecast for {day}?",
                f"What is the weather forecast for {next_day}?",
                "date",
            )
        )
    return out


@dataclass(frozen=True)
class Judged:
    pair: Pair
    similarity: float
    conflict: str | None  # what the guard found, if anything


@dataclass(frozen=True)
class Row:
    threshold: float
    recall: float  # paraphrases matched, with the guard
    recall_without_guard: float
    false_hits: int  # near misses matched, with the guard
    false_hits_without_guard: int
    precision: float


def judge(all_pairs: list[Pair]) -> list[Judged]:
    from o1sidecar.cachesvc.embedding import Embedder
    from o1sidecar.cachesvc.guard import conflict

    embedder = Embedder()
    texts = sorted({t for p in all_pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    return [Judged(p, float(vectors[p.a] @ vectors[p.b]), conflict(p.a, p.b)) for p in all_pairs]


def rows(judged: list[Judged]) -> list[Row]:
    paraphrases = [j for j in judged if j.pair.should_match]
    near = [j for j in judged if not j.pair.should_match]
    out = []
    for t in THRESHOLDS:
        hits = [j for j in paraphrases if j.similarity >= t and j.conflict is None]
        false = [j for j in near if j.similarity >= t and j.conflict is None]
        out.append(
            Row(
                t,
                len(hits) / len(paraphrases),
                sum(j.similarity >= t for j in paraphrases) / len(paraphrases),
                len(false),
                sum(j.similarity >= t for j in near),
                len(hits) / (len(hits) + len(false)) if hits or false else 1.0,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="o1pool cache-eval", description=__doc__)
    parser.add_argument(
        "--plot", metavar="PNG", help="also write a PNG of recall and false hits by threshold"
    )
    args = parser.parse_args(argv)
    from o1pool.loadgen import table

    all_pairs = pairs()
    started = time.perf_counter()
    judged = judge(all_pairs)
    seconds = time.perf_counter() - started
    near = sum(not p.should_match for p in all_pairs)
    print(
        f"{len(all_pairs) - near} paraphrase pairs, {near} near misses "
        f"(negation, number, name, date: 30 each); embedded in {seconds:.1f} s"
    )
    table_rows = rows(judged)
    print(
        table(
            [
                "threshold",
                "recall",
                "recall, similarity alone",
                "false hits",
                "false hits, similarity alone",
                "precision",
            ],
            [
                (
                    f"{r.threshold:.2f}",
                    f"{r.recall:.0%}",
                    f"{r.recall_without_guard:.0%}",
                    f"{r.false_hits}/{near}",
                    f"{r.false_hits_without_guard}/{near}",
                    f"{r.precision:.3f}",
                )
                for r in table_rows
            ],
        )
    )
    at_default = next(r for r in table_rows if r.threshold == DEFAULT_THRESHOLD)
    met = at_default.false_hits == 0 and at_default.recall >= 0.70
    print(
        f"at {DEFAULT_THRESHOLD}: {at_default.false_hits} false hits, {at_default.recall:.0%} recall: "
        f"targets (0 false hits, >= 70% recall) {'met' if met else 'missed'}"
    )
    if args.plot:
        from o1pool.plots import write_cache_eval_plot

        print(f"plot: {write_cache_eval_plot(Path(args.plot), table_rows, near, DEFAULT_THRESHOLD)}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
