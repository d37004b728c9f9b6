"""mkdocs hook: the measured results under ``benchmarks/results/`` become pages of the site.

Each results folder becomes the page ``benchmarks/results/<folder>/index.md``: its ``README.md`` when it has one
(the command, wall time and findings of that run), otherwise a generated list of its files.
The folders' other markdown files (``report.md`` tables), PNG plots and text logs (wall times)
come along, so the docs link to results with links that ``mkdocs build --strict`` checks. The
raw rows (SQLite, JSONL) stay in the repository and are listed by name only.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path("benchmarks") / "results"
SITE_FOLDER = "benchmarks/results"  # the same path as in the repository
ROOT_INTRO = (
    "Each folder holds one measurement. Its page is the folder's README where it has one (the "
    "command that produced it, its wall time and what it found), otherwise the list of its files. "
    "[What we measured](../../measurements.md) summarizes them."
)
COPIED = (".md", ".png", ".txt")  # pages, plots and wall-time logs; raw rows stay out


def on_files(files, config):
    """Add the results folders' pages and plots to the site's files."""
    root = Path(config.config_file_path).parent / RESULTS
    for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        rel = folder.relative_to(root).as_posix()
        prefix = SITE_FOLDER if rel == "." else f"{SITE_FOLDER}/{rel}"
        readme = folder / "README.md"
        if readme.is_file():
            files.append(File.generated(config, f"{prefix}/index.md", abs_src_path=str(readme)))
        else:
            files.append(File.generated(config, f"{prefix}/index.md", content=listing(folder, root)))
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in COPIED and path.name != "README.md":
                files.append(File.generated(config, f"{prefix}/{path.name}", abs_src_path=str(path)))
    return files


def listing(folder: Path, root: Path) -> str:
    """A page for a folder without a README: its subfolders and files, linked where the site has them."""
    rel = folder.relative_to(root)
    title = (RESULTS / rel).as_posix() if rel != Path(".") else RESULTS.as_posix()
    lines = [f"# `{title}/`", ""]
    if rel == Path("."):
        lines += [ROOT_INTRO, ""]
    lines += ["The files of this folder in the repository:", ""]
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            lines.append(f"- [`{path.name}/`]({path.name}/index.md)")
        elif path.suffix in COPIED:
            lines.append(f"- [`{path.name}`]({path.name})")
        else:
            lines.append(f"- `{path.name}`")
    return "\n".join(lines) + "\n"
