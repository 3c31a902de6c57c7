"""The first run a new user makes: `interp train` with no arguments (the bundled MNIST sample, the MLP,
every default stage at epochs 0–5), timed from the shell's point of view.

Each round runs the command once per source tree, alternating, so that a shared machine's load falls on
all of them alike. Prints, per tree, the median wall seconds, CPU seconds (the process and its drawing
workers), and the stage seconds summed over the six analysis points (from metrics.jsonl), then the
fastest wall time (the closest to a quiet machine), and the ratio to the same run with every stage off
(``--set analysis.stages=[]``, run in every round): the bound is 2.0.

    python benchmarks/first_run.py                          # this checkout, 3 rounds
    python benchmarks/first_run.py --baseline /tmp/old/src  # side by side with another checkout's src/
    python benchmarks/first_run.py --baseline /tmp/a/src --baseline /tmp/b/src  # or several
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(src: Path, folder: Path, *extra: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "interp", "train", "--save-dir", str(folder), *extra], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stages: collections.Counter[str] = collections.Counter()
    for line in next(folder.glob("*/metrics.jsonl")).read_text().splitlines():
        for key, value in json.loads(line).items():
            if key.startswith("seconds/"):
                stages[key.removeprefix("seconds/")] += value
    return {"wall": wall, "cpu": cpu, **stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another checkout's src/ folder to compare with (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = {"this": Path(__file__).resolve().parent.parent / "src"}
    bare: list[float] = []  # this checkout with every stage off: the bound is 2.0 × its wall time
    if args.baseline:
        names = ["baseline"] if len(args.baseline) == 1 else [f"baseline{i + 1}" for i in range(len(args.baseline))]
        trees = {**{name: src.resolve() for name, src in zip(names, args.baseline, strict=True)}, **trees}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, src in trees.items():
                folder = Path(tmp) / f"{name}-{round_}"
                results[name].append(one_run(src, folder))
                print(f"round {round_ + 1} {name}: {results[name][-1]['wall']:.2f} s wall", file=sys.stderr)
            bare.append(one_run(trees["this"], Path(tmp) / f"bare-{round_}", "--set", "analysis.stages=[]")["wall"])
            print(f"round {round_ + 1} stages off: {bare[-1]:.2f} s wall", file=sys.stderr)
    keys = list(results[next(iter(trees))][0])
    print(f"{'median of ' + str(args.rounds):<32}" + "".join(f"{name:>12}" for name in trees))
    for key in keys:
        values = [statistics.median(r.get(key, 0.0) for r in results[name]) for name in trees]
        label = {"wall": "wall s", "cpu": "CPU s (all processes)"}.get(key, f"stage {key} s")
        print(f"{label:<32}" + "".join(f"{v:>12.2f}" for v in values))
    print(f"{'fastest wall s':<32}" + "".join(f"{min(r['wall'] for r in results[n]):>12.2f}" for n in trees))
    off = statistics.median(bare)
    print(f"{'stages off: wall s':<32}{off:>12.2f}  (this checkout, every stage off)")
    print(f"{'ratio to stages off':<32}" + "".join(
        f"{statistics.median(r['wall'] for r in results[n]) / off:>12.2f}" for n in trees) + "  (bound: 2.0)")
    print(f"{'stages on training path':<32}" + "".join(
        f"{statistics.median(sum(v for k, v in r.items() if k not in ('wall', 'cpu')) for r in results[n]):>12.2f}"
        for n in trees))


if __name__ == "__main__":
    main()
