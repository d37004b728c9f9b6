"""Method specifications as users write them (``restkv[window_size=auto;alpha=0.7]``) and as sweeps key them.

Kept apart from the evaluation engine so that the CLI, the demo, the tuner and the benchmarks
can name methods without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from .press import KVPress, get_press


@dataclass(frozen=True)
class MethodConfig:
    """One point of a sweep: a method, a budget, and the method's parameters."""

    method: str
    budget: int | None = None
    params: tuple = ()  # sorted (name, value) pairs, hashable
    allocator: str | None = None  # None: the method's own default

    @classmethod
    def make(cls, method: str, budget: int | None = None, allocator: str | None = None, **params) -> MethodConfig:
        """A configuration from keyword parameters (``full`` takes no budget)."""
        return cls(method, None if method == "full" else budget, tuple(sorted(params.items())), allocator)

    def press(self) -> KVPress:
        """The press this configuration describes."""
        if self.method == "full":
            return get_press("full")
        return get_press(self.method, budget=self.budget, allocator=self.allocator, **dict(self.params))

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        alloc = f"+{self.allocator}" if self.allocator else ""
        return f"{self.method}{alloc}{'(' + extra + ')' if extra else ''}"


def parse_method_spec(spec: str) -> tuple[str, dict]:
    """``restkv`` or ``restkv[window_size=auto;alpha=0.7]``: a method name and its own parameters."""
    if "[" not in spec:
        return spec.strip(), {}
    name, _, body = spec.partition("[")
    pairs = [p for p in body.rstrip().removesuffix("]").split(";") if p.strip()]
    if not spec.rstrip().endswith("]") or any("=" not in p for p in pairs):
        raise ValueError(f"method {spec!r} must look like name[key=value;key=value]")
    return name.strip(), {k.strip(): parse_value(v.strip()) for k, v in (p.split("=", 1) for p in pairs)}


def parse_value(text: str):
    """A command-line value as int, float, bool or string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
