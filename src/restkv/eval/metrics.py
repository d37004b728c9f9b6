"""Answer metrics of the long-context benchmarks, written from their definitions.

The definitions follow LongBench's evaluation (``THUDM/LongBench``, ``metrics.py``) and
InfiniteBench's (``OpenBMB/InfiniteBench``): SQuAD-style normalisation and token F1,
ROUGE-L, classification, retrieval and counting scores, and code line similarity.
Differences: ROUGE-L is the sentence-level LCS F1 on whitespace tokens (LongBench calls the
``rouge`` package, whose ROUGE-L F differs slightly on multi-sentence texts); code similarity is
``difflib``'s ratio, which is what ``fuzzywuzzy`` itself falls back to without
python-Levenshtein.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: list[str], reference: list[str]) -> float:
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str, **_) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str, **_) -> float:
    """ROUGE-L F1 on lower-cased whitespace tokens."""
    p, r = prediction.lower().split(), reference.lower().split()
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def classification(prediction: str, reference: str, all_classes=(), **_) -> float:
    """1 / (number of classes named) if the right class is among them; classes that are part
    of the right one's name do not count against it."""
    named = [c for c in all_classes if c in prediction]
    named = [c for c in named if not (c in reference and c != reference)]
    return 1.0 / len(named) if reference in named else 0.0


def _share_equal(numbers: list[str], target: str) -> float:
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def retrieval(prediction: str, reference: str, **_) -> float:
    """Share of the numbers in the answer that name the right paragraph ("Paragraph N")."""
    match = re.findall(r"Paragraph (\d+)", reference)
    return _share_equal(re.findall(r"\d+", prediction), match[0]) if match else 0.0


def count(prediction: str, reference: str, **_) -> float:
    """Share of the numbers in the answer that equal the right count."""
    return _share_equal(re.findall(r"\d+", prediction), str(reference))


def code_similarity(prediction: str, reference: str, **_) -> float:
    """Similarity of the first answer line that is not a comment or fence to the right line."""
    line = next((x for x in prediction.lstrip("\n").split("\n") if "`" not in x and "#" not in x and "//" not in x), "")
    return round(100 * difflib.SequenceMatcher(None, line, reference).ratio()) / 100


def best_of(metric, prediction: str, references: list[str], **kwargs) -> float:
    """The metric against the closest of several references."""
    return max((metric(prediction, r, **kwargs) for r in references), default=0.0)
