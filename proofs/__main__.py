"""``python -m proofs [NAME ...]``: run the check scripts of proofs/ (all, or those named), each in its own
interpreter, and print a summary.

Exits non-zero if any script fails. Each script is also runnable alone: ``python -m proofs.check_<name>``.
"""
import argparse
import subprocess
import sys
import time

from proofs import CHECKS


def run_check(name: str) -> tuple[int, float]:
    """Run ``python -m proofs.check_<name>``, streaming its output; return (exit status, seconds)."""
    start = time.perf_counter()
    status = subprocess.call([sys.executable, "-m", f"proofs.check_{name}"])
    return status, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proofs", description="Run the check scripts of proofs/ (all, or "
                                     "those named) and print a summary.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"check scripts to run (default: all): {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in CHECKS]
    if unknown:
        parser.error(f"NAME: unknown {unknown}; expected some of {list(CHECKS)}")
    names = args.names or list(CHECKS)
    results = {name: run_check(name) for name in names}
    print("\n== summary")
    for name, (status, seconds) in results.items():
        print(f"  {'passed' if status == 0 else 'FAILED'}  proofs.check_{name}  ({seconds:.1f} s)")
    failed = [name for name, (status, _) in results.items() if status != 0]
    print(f"== {len(names) - len(failed)} of {len(names)} check scripts passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
