"""Plot the cost-vs-body-size series (``bench_inprocess.py --suite sizes``) to a PNG.

Top row: CPU time per request; bottom row: the extra over the bare app. One column per
glibc malloc setting measured. Run: ``python benchmarks/bench_plot.py RESULTS.json
[--out docs/perf-body-size.png]`` (``run_all.py`` calls :func:`plot` itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use("Agg")

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "perf-body-size.png"
STYLE = {
    "bare": ("bare Starlette app", "black", "o"),
    "floor": ("floor: buffer + bytes scan + replay", "tab:green", "s"),
    "decode_floor": ("(bound) decode floor: floor with our decode", "tab:olive", "v"),
    "ours": ("MCPAuthMiddleware", "tab:blue", "D"),
    "basehttp": ("BaseHTTPMiddleware + request.json()", "tab:red", "^"),
}


def _label(size: int) -> str:
    return f"{size // 2**20} MB" if size >= 2**20 else f"{size // 1024} KB"


def plot(results: dict[str, Any], out: Path = DEFAULT_OUT) -> Path:
    series = [(k, v) for k, v in results.items() if k.startswith("sizes_") and v["sizes"]]
    series = [s for s in series if len(s[1]["sizes"]) > 2] or series  # full series first
    fig, axes = plt.subplots(
        2, len(series), figsize=(6 * len(series), 8), squeeze=False, sharex=True
    )
    for col, (_, data) in enumerate(series):
        sizes = sorted(int(s) for s in data["sizes"])
        rows = [data["sizes"][str(s)] for s in sizes]
        top, bottom = axes[0][col], axes[1][col]
        for name, (label, color, marker) in STYLE.items():
            if name not in rows[0]["per_call_us"]:
                continue  # results written before the decode floor was measured
            top.plot(
                sizes,
                [r["per_call_us"][name] for r in rows],
                label=label,
                color=color,
                marker=marker,
            )
            if name != "bare":
                bottom.plot(
                    sizes,
                    [max(r["extra_us"][name], 0.1) for r in rows],
                    label=label,
                    color=color,
                    marker=marker,
                )
        env = (
            ", ".join(
                f"{k.removeprefix('MALLOC_')}={int(v) // 2**20} MiB" for k, v in data["env"].items()
            )
            or "glibc defaults"
        )
        top.set_title(f"malloc: {data['malloc']} ({env})", fontsize=9)
        top.set_ylabel("CPU µs per request")
        bottom.set_ylabel("extra over bare, µs (<= 0 drawn at 0.1)")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xticks(sizes, [_label(s) for s in sizes])
        bottom.set_xlabel("JSON body size (one MCP credential)")
        top.legend(fontsize=8)
    fig.suptitle("In-process cost vs body size (median of rounds, one run)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", help="JSON written by bench_inprocess.py or run_all.py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    results = results.get("inprocess_sizes", results)
    print(plot(results, args.out))


if __name__ == "__main__":
    main()
