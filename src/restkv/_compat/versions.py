"""The version check every ``_compat`` module runs before it touches another project's internals.

A range is written like a requirement, ``">=5.2,<6"`` (clauses ``>=``, ``>``, ``<=``, ``<``,
``==``, joined by commas), and compared on the release numbers only, so ``5.24.0.dev0`` and
``2.13.0+cpu`` count as ``5.24.0`` and ``2.13.0``: no dependency on ``packaging``.
"""

from __future__ import annotations

import operator
import re
from importlib import metadata

_OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_CLAUSE = re.compile(r"\s*(>=|<=|==|>|<)\s*(\d+(?:\.\d+)*)\s*$")
#: (distribution, range, version) triples already found in range: the hot paths check once
_passed: set[tuple[str, str, str]] = set()


class UnsupportedVersionError(RuntimeError):
    """An installed project's version is outside the range a ``_compat`` module was written for."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The leading release numbers of ``version`` (``"2.13.0+cpu"`` -> ``(2, 13, 0)``)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise ValueError(f"cannot read a release number from version {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def in_range(version: str, supported: str) -> bool:
    """Whether ``version`` satisfies every clause of ``supported`` (``">=5.2,<6"``)."""
    have = release(version)
    for clause in supported.split(","):
        match = _CLAUSE.match(clause)
        if match is None:
            raise ValueError(f"cannot read the version clause {clause!r} of {supported!r}")
        mine, bound = _padded(have, release(match.group(2)))
        if not _OPERATORS[match.group(1)](mine, bound):
            return False
    return True


def require(distribution: str, supported: str, seam: str) -> None:
    """Raise :class:`UnsupportedVersionError` unless the installed ``distribution`` is in ``supported``.

    ``seam`` names what restkv does with the project's internals, for the message. A project that
    is not installed at all passes: the import that needs it fails with its own message.
    """
    version = installed_version(distribution)
    if version is None or (distribution, supported, version) in _passed:
        return
    if not in_range(version, supported):
        raise UnsupportedVersionError(
            f"{seam} was written for {distribution}{supported} and {distribution} {version} is installed: "
            f"install a version in that range, or update restkv/_compat for this one"
        )
    _passed.add((distribution, supported, version))
