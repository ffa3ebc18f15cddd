"""`python -m bench [--quick] [--json PATH] [--only NAME ...]`: the speed and efficiency benchmarks.

Every figure is a ratio of ours to a baseline measured in the same run on the same machine; the table says what
each side measured. Tests never check timings; these numbers go into the README with the machine they came from.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

import torch

BENCHMARKS = ["data", "trainable", "sweeps", "asha", "scale", "gpu", "cluster", "autoscale", "rounds", "estimate"]


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few minutes on 2 cores)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", nargs="*", default=None, choices=BENCHMARKS)
    args = parser.parse_args(argv)

    report: dict = {"machine": machine(), "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = []
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        for result in module.run(quick=args.quick):
            report[result.key] = result.value
            report.setdefault("details", {})[result.key] = {"ours": result.ours, "baseline": result.baseline,
                                                           "target": result.target, **result.details}
            rows.append(result)
        print(f"[{name}: {time.monotonic() - started:.0f}s]", file=sys.stderr)

    print(f"{'measure':<26} {'ratio':>9}  {'target':<8} ours / baseline")
    for r in rows:
        value = "-" if r.value is None else f"{r.value:.3g}"
        print(f"{r.key:<26} {value:>9}  {r.target:<8} {r.ours}\n{'':<46}/ {r.baseline}")
    print(f"machine: {report['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
