"""A tiny ledger for the check scripts: print every claim with its evidence, exit non-zero if any failed."""
import sys


class Report:
    """Collects named checks; ``finish()`` prints a summary and exits 1 if any check failed."""

    def __init__(self, title: str):
        self.title = title
        self.failed: list[str] = []
        self.count = 0
        print(f"== {title}")

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record claim ``name``; ``detail`` states the evidence (values, error bounds)."""
        self.count += 1
        status = "ok  " if ok else "FAIL"
        print(f"  [{status}] {name}" + (f": {detail}" if detail else ""))
        if not ok:
            self.failed.append(name)
        return bool(ok)

    def finish(self) -> None:
        """Print the summary line and exit with status 1 if any check failed."""
        if self.failed:
            print(f"== {self.title}: {len(self.failed)} of {self.count} checks FAILED: {', '.join(self.failed)}")
            sys.exit(1)
        print(f"== {self.title}: all {self.count} checks passed")
