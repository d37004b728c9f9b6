"""Answer metrics of the long-context benchmarks, written from their definitions.

The definitions follow LongBench's evaluation (``THUDM/LongBench``, ``metrics.py``) and
InfiniteBench's (``OpenBMB/InfiniteBench``): SQuAD-style normalisation and token F1,
ROUGE-L, classification, retrieval and counting scores, and code line similarity.
Differences: ROUGE-L is the sentence-level LCS F1 on whitespace tokens (LongBench calls the
``rouge`` package, whose ROUGE-L F differs slightly on multi-sentence texts); code similarity is
``difflib``'s ratio, which is what ``fuzzywuzzy`` itself falls back to without
python-Levenshtein.

The last section compares next-token distributions (the engine's fidelity numbers): KL
divergence and top-1 agreement against the full cache, and perplexity. They take tensors but
import torch only when called, so the answer metrics (and ``restkv report``) load without it.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


# -- next-token distributions -----------------------------------------------------------------


def kl_and_top1(reference_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || other) per row and share of rows with the same argmax.

    Both are ``[steps, vocab]`` (or any leading shape, the same for both), compared in float32.
    """
    ref_logp = reference_logits.float().log_softmax(-1)
    logp = logits.float().log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0)
    top1 = (reference_logits.argmax(-1) == logits.argmax(-1)).float()
    return float(kl.mean()), float(top1.mean())


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Perplexity of ``targets`` ``[steps]`` under ``logits`` ``[steps, vocab]``: the exponential of
    the mean cross-entropy, in float32."""
    import torch  # here, not at the top: the answer metrics above load without torch

    nll = torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device))
    return float(torch.exp(nll))


def answer_fidelity(reference: torch.Tensor, logits: torch.Tensor, k: int) -> tuple[list, list]:
    """Per row of the teacher-forced ``logits`` ``[rows, >= k - 1, vocab]``: KL and top-1 agreement
    with the full cache's ``reference`` ``[>= k, vocab]`` over answer steps 1..k-1 (step 0 is
    predicted by the shared prefill, the same for every cache). An answer of fewer than two
    tokens leaves nothing to compare: KL 0 and agreement 1 for every row."""
    rows = logits.shape[0]
    if k < 2:
        return [0.0] * rows, [1.0] * rows
    pairs = [kl_and_top1(reference[1:k], logits[r, : k - 1]) for r in range(rows)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
