"""Execute the toy notebooks and write them as .ipynb files with their outputs: ``python -m toy.notebooks.render``.

Each ``nb*.py`` here is a Jupytext percent-format notebook (also runnable as a plain script). This reads it with
jupytext, executes it with nbclient in a fresh kernel (working directory: the repository root, so relative run
folders land under ``runs/``) and writes ``OUT/<name>.ipynb``. ``--small`` sets ``TOY_NOTEBOOK_SMALL=1``, the tiny
settings the tests use; ``TOY_NOTEBOOK_OUT`` (default ``OUT/runs``) is where the notebooks put their runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def notebooks() -> list[Path]:
    return sorted(HERE.glob("nb*.py"))


def render(path: Path, out: Path, *, timeout: int = 1800, kernel: str = "python3") -> Path:
    """Execute one percent-format notebook and write ``out/<stem>.ipynb``; raises on a failing cell."""
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(REPO)}}).execute()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{path.stem}.ipynb"
    nbformat.write(nb, target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toy.notebooks.render", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the executed .ipynb files")
    p.add_argument("--small", action="store_true", help="tiny settings (TOY_NOTEBOOK_SMALL=1), as in the tests")
    p.add_argument("--only", nargs="*", default=None, help="notebook stems to render (default: all)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args(argv)
    os.environ.setdefault("TOY_NOTEBOOK_OUT", str((args.out / "runs").resolve()))
    if args.small:
        os.environ["TOY_NOTEBOOK_SMALL"] = "1"
    chosen = [nb for nb in notebooks() if args.only is None or nb.stem in args.only]
    if not chosen:
        raise SystemExit(f"--only: no notebook matches {args.only}; available: {[nb.stem for nb in notebooks()]}")
    for nb in chosen:
        t0 = time.perf_counter()
        target = render(nb, args.out, timeout=args.timeout)
        print(f"{target}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
