"""A/B of two revisions of the middleware in one process: is a change faster, and by how much?

Runs of ``run_all.py`` move by about 0.1x between runs on a shared machine, more than most
single changes gain or lose. This script measures both revisions side by side instead:
the other revision's package (``git archive REV``, default ``HEAD``) is imported under
another module name, each case runs through both middlewares and a bare app, interleaved
round by round, and the figure is the median of the per-round differences (new - old),
with its interquartile range. A difference whose IQR straddles 0 is noise.

The other revision is renamed by rewriting ``mcp_auth_middleware`` in its source files
(imports, and the audit logger's name): fine for timing, not for anything else.

Run: ``python benchmarks/compare.py [REV] [--rounds 41] [--batch-ms 4]``; the working
tree is "new".
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import common
from common import CASES, Variant, app_with, measure

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mcp_auth_middleware"
OLD = "mcp_auth_middleware_old"


def load_revision(rev: str, into: Path) -> ModuleType:
    """The package as of ``rev``, importable as :data:`OLD`."""
    archive = into / "old.tar"
    with archive.open("wb") as out:
        subprocess.run(  # noqa: S603 - our own arguments
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev, PACKAGE],  # noqa: S607
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # 3.11.4 and later
            tar.extractall(into / "src", filter="data")
        else:  # pragma: no cover - our own archive, from git
            tar.extractall(into / "src")  # noqa: S202
    (into / "src" / PACKAGE).rename(into / OLD)
    for path in (into / OLD).rglob("*.py"):
        path.write_text(path.read_text().replace(PACKAGE, OLD))
    sys.path.insert(0, str(into))
    return importlib.import_module(OLD)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("rev", nargs="?", default="HEAD", help="the old revision (git)")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--batch-ms", type=float, default=4.0, help="target time per batch")
    args = parser.parse_args(argv)

    fd, log_path = tempfile.mkstemp(prefix="bench-compare-", suffix=".jsonl")
    os.close(fd)
    close = common.configure_json_logging(log_path)
    import mcp_auth_middleware as new

    try:
        with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
            old = load_revision(args.rev, Path(tmp))
            bare = {"bare": common.build_app("bare"), "bare_audit": common.build_app("bare_audit")}
            variants: list[Variant] = []
            for case, (request, config, base) in CASES.items():
                variants += [
                    Variant(f"{case}|bare", bare[base], request),
                    Variant(f"{case}|old", app_with(old, **config), request),
                    Variant(f"{case}|new", app_with(new, **config), request),
                ]
            res = measure(variants, rounds=args.rounds, batch_s=args.batch_ms / 1000)
    finally:
        close()
        os.unlink(log_path)

    say = sys.stdout.write
    say(
        f"new (working tree) against old ({args.rev}), CPU µs per request, "
        f"{args.rounds} rounds; diff = median of per-round (new - old), IQR in brackets\n"
    )
    say(f"  {'case':20} {'bare':>7} {'old':>14} {'new':>14} {'new - old':>22}\n")
    for case in CASES:
        b, o, n = (res[f"{case}|{which}"].cpu for which in ("bare", "old", "new"))
        diffs = [(x - y) * 1e6 for x, y in zip(n, o, strict=True)]
        q1, _, q3 = statistics.quantiles(diffs, n=4)
        say(
            f"  {case:20} {common.median(b) * 1e6:7.1f} "
            f"{common.median(o) * 1e6:7.1f} ({common.ratio(o, b):.2f}x) "
            f"{common.median(n) * 1e6:7.1f} ({common.ratio(n, b):.2f}x) "
            f"{statistics.median(diffs):+8.2f} [{q1:+.2f}, {q3:+.2f}]\n"
        )


if __name__ == "__main__":
    main()
