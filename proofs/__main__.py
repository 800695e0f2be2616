"""``python -m proofs``: run every check script of proofs/ in its own interpreter and print a summary.

Exits non-zero if any script fails. Each script is also runnable alone: ``python -m proofs.check_<name>``.
"""
import subprocess
import sys
import time

from proofs import CHECKS


def run_check(name: str) -> tuple[int, float]:
    """Run ``python -m proofs.check_<name>``, streaming its output; return (exit status, seconds)."""
    start = time.perf_counter()
    status = subprocess.call([sys.executable, "-m", f"proofs.check_{name}"])
    return status, time.perf_counter() - start


def main() -> None:
    results = {name: run_check(name) for name in CHECKS}
    print("\n== summary")
    for name, (status, seconds) in results.items():
        print(f"  {'passed' if status == 0 else 'FAILED'}  proofs.check_{name}  ({seconds:.1f} s)")
    failed = [name for name, (status, _) in results.items() if status != 0]
    print(f"== {len(CHECKS) - len(failed)} of {len(CHECKS)} check scripts passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
