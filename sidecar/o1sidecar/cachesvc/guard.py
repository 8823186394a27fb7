"""The check after a semantic match: two questions that differ in a negation, a number, a name or a date
must not share an answer, however close their embeddings are ("How do I reset my password?" and "How
do I not reset my password?" are 0.93 apart in all-MiniLM-L6-v2). Pure, and deliberately strict: a
missed paraphrase costs one upstream call, a wrong answer costs trust.
"""

from __future__ import annotations

import re
from collections import Counter

NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor nowhere cannot without isnt arent wasnt werent dont "
    "doesnt didnt wont wouldnt shouldnt couldnt cant hasnt havent hadnt mustnt neednt".split()
)
NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
    "million billion trillion first second third fourth fifth sixth seventh eighth ninth tenth half "
    "quarter double triple dozen".split()
)
DATE_WORDS = frozenset(
    "january february march april may june july august september october november december jan feb mar "
    "apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday today "
    "tomorrow yesterday tonight weekend week month year decade century morning afternoon evening night "
    "spring summer autumn fall winter last next ago".split()
)
# Words that often open a sentence: capitalised there, they are not names. Any other capitalised first
# word counts as a name (a missed paraphrase is cheaper than a wrong answer).
STARTERS = frozenset(
    "what whats how hows why who whos whom whose when where which is are was were am can could do does did "
    "should would will shall may might must the a an please explain describe tell give list write show "
    "find compare summarise summarize define translate i im ive my we our you your it its this that these "
    "those there in on at for from of to by with if and or but so as also then now here some any all each "
    "every help let lets calculate compute convert".split()
)
PRONOUNS = frozenset({"i", "im", "ive", "id", "ill"})  # "I" is capitalised anywhere
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019]*|\d+(?:[.,:/-]\d+)*%?")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


def features(text: str) -> dict[str, Counter[str]]:
    """What must be equal for two questions to share an answer: negations, numbers, names, dates."""
    found: dict[str, Counter[str]] = {
        "negation": Counter(),
        "number": Counter(),
        "name": Counter(),
        "date": Counter(),
    }
    for sentence in _SENTENCES.split(text):
        for position, match in enumerate(_WORD.finditer(sentence)):
            token = match.group()
            word = token.lower().replace("'", "").replace("\u2019", "")
            if token[0].isdigit():
                found["number"][token.rstrip(".,")] += 1
            elif word in NEGATIONS:
                found["negation"]["not"] += 1
            elif word in NUMBER_WORDS:
                found["number"][word] += 1
            elif word in DATE_WORDS:
                found["date"][word] += 1
            elif token[0].isupper() and word not in PRONOUNS and (position > 0 or word not in STARTERS):
                found["name"][word] += 1  # a capitalised word, unless a common first word of a sentence
    return found


def conflict(a: str, b: str) -> str | None:
    """Why ``a`` and ``b`` must not share an answer (``negation``, ``number``, ``name``, ``date``), or
    ``None`` when nothing of that kind tells them apart."""
    fa, fb = features(a), features(b)
    for kind in ("negation", "number", "name", "date"):
        if fa[kind] != fb[kind]:
            return kind
    return None
