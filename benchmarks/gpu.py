"""GPU figures in one run, printed as one JSON object. ``benchmarks/gpu.sh`` installs what a bare GPU
machine lacks and calls this; ``--smoke`` runs every section at tiny sizes on the CPU in about a minute
(the test suite does), so that the script is known to work before a GPU is at hand.

Sections, in the order they run; each gets what is left of ``--budget`` seconds, and one that does not fit
is recorded as skipped (the JSON is also written after every section, to ``--out``):

1. ``throughput`` — All-CNN-C (width 96) on CIFAR-10-shaped synthetic images, batch 512: training images
   per second of interp (stages off) and of the plainest tensor loop on the same device, model and precision,
   for fp32, bf16, bf16 + channels_last and bf16 + channels_last + torch.compile, and their ratio; and how
   often interp's training pass waits for the device (host synchronisations per epoch).
2. ``analysis_share`` — 10 epochs of the same net on 60,000 synthetic images with every default stage on:
   the share of the wall time that is neither training nor evaluation.
3. ``torchrun`` — one process with NCCL: the distributed path, end to end.
4. ``recipe`` — ``interp train -c configs/cifar10_allconv.yaml`` on the bundled MNIST sample, every default
   stage on: accuracy, wall time, and the share of the wall spent in analysis.
5. ``stage_costs`` — each default stage's seconds beside a training epoch, for the MLP, the all-conv net and
   a ResNet-18 at 28, 64 and 128 px (10,000 training images, the default batch of 128, fp32).

    bash benchmarks/gpu.sh                          # on the GPU machine
    python benchmarks/gpu.py --smoke                # on any machine, tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import yaml  # noqa: E402

TARGETS = {"allconv_bf16_channels_last_images_per_s": 100_000, "interp_over_plain": 0.95, "analysis_share": 0.10}
_CACHE: dict[tuple[Any, ...], Any] = {}


def synthetic_images(size: int = 32, channels: int = 3, train: int = 50_000, eval: int = 10_000,  # noqa: A002
                     classes: int = 10, seed: int = 0) -> dict[str, Any]:
    """A learnable synthetic image set (an ``interp`` dataset factory: ``data.dataset: gpu:synthetic_images``):
    each class has a smooth random pattern; every image is its class's pattern plus noise, as uint8 pixels.
    Made once per process for the same arguments."""
    key = (size, channels, train, eval, classes, seed)
    if key not in _CACHE:
        generator = torch.Generator().manual_seed(seed)
        patterns = torch.rand(classes, channels, 4, 4, generator=generator)
        patterns = torch.nn.functional.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)

        def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, classes, (n,), generator=generator)
            noise = torch.randint(0, 128, (n, channels, size, size), generator=generator, dtype=torch.uint8)
            images = (patterns[labels] * 127).to(torch.uint8) + noise
            return images, labels

        _CACHE[key] = {"train": split(train), "eval": split(eval), "classes": [f"class {c}" for c in range(classes)]}
    return _CACHE[key]


class OutOfTime(BaseException):
    """Raised in the main thread when a section's time is up (a BaseException: no stage catches it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise OutOfTime()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PhaseTimer:
    """An interp Reporter that times its progress phases ("training", "evaluation") and, with ``syncs``,
    counts the CUDA operations that make the host wait inside the training phase."""

    def __init__(self, syncs: bool = False):
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.syncs: list[int] = []
        self.count_syncs = syncs

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        counting = self.count_syncs and description == "training" and torch.cuda.is_available()
        with warnings.catch_warnings(record=True) as caught:
            if counting:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            start = time.perf_counter()
            try:
                yield lambda n, what=None: None
            finally:
                if counting:
                    torch.cuda.set_sync_debug_mode("default")
                    self.syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        self.seconds[description].append(time.perf_counter() - start)

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


def config(overrides: list[str]):  # type: ignore[no-untyped-def]
    from interp.config import load_config

    return load_config(None, overrides)


def data_overrides(size: int, channels: int, train: int, eval: int) -> list[str]:  # noqa: A002
    return ["data.dataset=gpu:synthetic_images",
            f"data.args={{size: {size}, channels: {channels}, train: {train}, eval: {eval}}}"]


def interp_fit(overrides: list[str], save_dir: Path, reporter: PhaseTimer | None = None):  # type: ignore[no-untyped-def]
    from interp.train import fit

    reporter = reporter or PhaseTimer()
    start = time.perf_counter()
    result = fit(config(overrides), save_dir=save_dir, reporter=reporter)
    return result, reporter, time.perf_counter() - start


def steady(values: list[float]) -> float:
    """The median of the epochs after the first (cuDNN's autotuner and compilation run in the first)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- sections ----------------------------------------------------------------------------------------
def throughput(p: dict[str, Any], device: str, tmp: Path, deadline: float) -> dict[str, Any]:
    from overhead import plain_epochs

    base = [*data_overrides(32, 3, p["images"], p["eval_images"]), "model.arch=allconv", f"model.width={p['width']}",
            f"data.batch_size={p['batch']}", f"train.device={device}", f"train.epochs={p['epochs']}",
            "analysis.stages=[]"]
    variants = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False),
                "bf16_channels_last": ("bf16", True, False), "bf16_channels_last_compile": ("bf16", True, True)}
    out: dict[str, Any] = {"model": f"All-CNN-C width {p['width']}", "images": p["images"], "batch": p["batch"],
                           "epochs": p["epochs"], "measure": "training images/s, median of the epochs after the "
                           "first", "variants": {}}
    n = p["images"]
    for name, (precision, channels_last, compiled) in variants.items():
        if compiled and not p["compile"]:
            out["variants"][name] = {"skipped": "smoke: torch.compile takes minutes to build on a CPU"}
            continue
        if time.perf_counter() > deadline:
            out["variants"][name] = {"skipped": "out of time"}
            continue
        overrides = [*base, f"train.precision={precision}", f"train.channels_last={str(channels_last).lower()}",
                     f"train.compile={str(compiled).lower()}"]
        try:
            with time_limit(deadline - time.perf_counter()):
                plain = plain_epochs(config(overrides), p["epochs"], torch.device(device),
                                     channels_last=channels_last, compiled=compiled)
                free_memory()
                # the waits are counted (at the waits alone) in one variant's training passes
                timer = PhaseTimer(syncs=name == "bf16_channels_last")
                interp_fit(overrides, tmp / f"throughput-{name}", timer)
                free_memory()
        except OutOfTime:
            out["variants"][name] = {"skipped": "out of time"}
            continue
        except Exception as exc:  # recorded; the other variants go on
            out["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        plain_s, interp_s = steady([t for t, _ in plain]), steady(timer.seconds["training"])
        out["variants"][name] = {"plain_images_per_s": round(n / plain_s), "interp_images_per_s": round(n / interp_s),
                                 "interp_over_plain": round(plain_s / interp_s, 3),
                                 "plain_epoch_s": [round(t, 3) for t, _ in plain],
                                 "interp_epoch_s": [round(t, 3) for t in timer.seconds["training"]]}
        if timer.count_syncs:
            out["host_syncs_per_training_epoch"] = timer.syncs if device == "cuda" else "cuda only"
            out["steps_per_epoch"] = -(-n // p["batch"])
        print(f"  throughput {name}: {out['variants'][name]}", file=sys.stderr, flush=True)
    return out


def analysis_share(p: dict[str, Any], device: str, tmp: Path, deadline: float) -> dict[str, Any]:
    """The default stages at every epoch (the target), then at epoch 0 and the last only (``analysis.every``
    at the number of epochs), if time is left."""
    base = [*data_overrides(32, 3, p["images"], p["eval_images"]), "model.arch=allconv",
            f"model.width={p['width']}", f"data.batch_size={p['batch']}", f"train.device={device}",
            f"train.epochs={p['epochs']}", "train.precision=bf16", *p["stages"]]
    synthetic_images(32, 3, p["images"], p["eval_images"])  # made before the clock starts
    out: dict[str, Any] = {}
    for label, every in (("every_epoch", 1), ("first_and_last", p["epochs"])):
        if out and time.perf_counter() > deadline - 5:
            out[label] = {"skipped": "out of time"}
            continue
        with time_limit(deadline - time.perf_counter()):
            result, timer, wall = interp_fit([*base, f"analysis.every={every}"], tmp / f"analysis-share-{label}")
        rows = result.metrics
        epochs = sum(row["seconds"] for row in rows)  # training + evaluation, each epoch up to its last number read
        stages = stage_seconds(rows)
        out[label] = {
            "model": f"All-CNN-C width {p['width']}, bf16", "images": p["images"], "epochs": p["epochs"],
            "batch": p["batch"], "analysis_every": every,
            "wall_s": round(wall, 2), "training_and_evaluation_s": round(epochs, 2),
            "training_epoch_s": [round(t, 3) for t in timer.seconds["training"]],
            "stages_s": round(sum(stages.values()), 2), "analysis_share": round(1 - epochs / wall, 3),
            "stage_share": round(sum(stages.values()) / wall, 3), "eval_accuracy": rows[-1]["eval_accuracy"],
            "stage_seconds": stage_table(rows)}
        print(f"  analysis share {label}: {out[label]['analysis_share']} of {wall:.1f} s", file=sys.stderr, flush=True)
    return {**out["every_epoch"], "first_and_last": out.get("first_and_last"),
            "note": "analysis_share: 1 - (training + evaluation) / wall: the stages, the figures waited for at the end, "
                    "checkpoints and setup; stage_share: the stages' own seconds / wall"}


def stage_seconds(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each stage's seconds summed over the run's analysis points."""
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        for key, value in row.items():
            if key.startswith("seconds/"):
                totals[key.removeprefix("seconds/")] += value
    return dict(totals)


def stage_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage, longest first: its seconds at epoch 0, the median over the analysis points between the
    first and the last, at the last (where the once-a-run checks run), and in all."""
    table = {}
    for stage, total in sorted(stage_seconds(rows).items(), key=lambda kv: -kv[1]):
        key = f"seconds/{stage}"
        middle = [row[key] for row in rows[1:-1] if key in row]
        table[stage] = {"epoch0": round(rows[0].get(key, 0.0), 3),
                        "middle_median": round(statistics.median(middle), 3) if middle else None,
                        "final": round(rows[-1].get(key, 0.0), 3), "total": round(total, 2)}
    return table


def with_trust_images(stages: list[str], images: int) -> str:
    """``analysis.stages=[…]``: the stages of ``stages`` (one override, or none for the default stages) with
    the trust stage's final check scoring ``images`` images."""
    from interp.stages import default_stage_specs, parse_stage_specs

    listed = parse_stage_specs(yaml.safe_load(stages[0].split("=", 1)[1])) if stages else \
        [(name, {}) for name in default_stage_specs()]
    entries = [{name: {**options, "images": images}} if name == "trust" else {name: options} for name, options in listed]
    return "analysis.stages=" + json.dumps(entries)


def run_cli(args: list[str], cwd: Path, timeout: float,
            module: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *(module or ["-m", "interp"]), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=max(timeout, 1))
    return proc, time.perf_counter() - start


def recipe(p: dict[str, Any], device: str, tmp: Path, deadline: float) -> dict[str, Any]:
    folder = tmp / "recipe"
    folder.mkdir()
    args = ["train", "-c", str(ROOT / "configs" / "cifar10_allconv.yaml"), "--set", "data.dataset=mnist-sample",
            "--set", f"train.device={device}", "--save-dir", str(folder), *p["overrides"]]
    proc, wall = run_cli(args, folder, deadline - time.perf_counter())
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-800:]}"}
    run = next(folder.glob("*/metrics.jsonl")).parent
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stages = stage_seconds(rows)
    training = sum(row["seconds"] for row in rows)
    return {"command": "interp train -c configs/cifar10_allconv.yaml --set data.dataset=mnist-sample "
                       + " ".join(f"--set {o}" for o in p["overrides"][1::2]),
            "epochs": rows[-1]["epoch"], "eval_accuracy": rows[-1]["eval_accuracy"],
            "best_eval_accuracy": max(row["eval_accuracy"] for row in rows), "wall_s": round(wall, 2),
            "training_and_evaluation_s": round(training, 2), "stages_s": round(sum(stages.values()), 2),
            "analysis_share": round(sum(stages.values()) / wall, 3),
            "other_s": round(wall - training - sum(stages.values()), 2), "stage_seconds": stage_table(rows),
            "note": "analysis_share: the stages' seconds over the command's wall time; other_s: starting Python and "
                    "torch, loading, checkpoints, and the figures drawn after the last epoch"}


def torchrun(p: dict[str, Any], device: str, tmp: Path, deadline: float) -> dict[str, Any]:
    folder = tmp / "torchrun"
    folder.mkdir()
    args = ["--standalone", "--nproc_per_node", "1", str(ROOT / "benchmarks" / "gpu.py"), "--torchrun-child", "train",
            "--save-dir", str(folder), "--set", f"train.device={device}", *p["overrides"]]
    proc, wall = run_cli(args, folder, deadline - time.perf_counter(), module=["-m", "torch.distributed.run"])
    said = [json.loads(line.removeprefix("GROUP ")) for line in proc.stdout.splitlines() if line.startswith("GROUP ")]
    if proc.returncode != 0 or not said:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-800:]}", "group": said}
    rows = [json.loads(line) for line in next(folder.glob("*/metrics.jsonl")).read_text().splitlines()]
    return {**said[0], "processes": 1, "epochs": rows[-1]["epoch"], "eval_accuracy": rows[-1]["eval_accuracy"],
            "epoch_s": [row["seconds"] for row in rows[1:]], "wall_s": round(wall, 2)}


def stage_costs(p: dict[str, Any], device: str, tmp: Path, deadline: float) -> dict[str, Any]:
    out: dict[str, Any] = {"images": p["images"], "eval_images": p["eval_images"], "batch": 128, "precision": "fp32",
                           "measure": "two epochs: the seconds of the second (train + evaluate; the first tunes "
                                      "cuDNN), and of each default stage at epoch 0 (first use), epoch 1 and the final "
                                      "epoch (where the full trust check runs)",
                           "final_trust": f"{p['final_images']} images at the first size, "
                                          f"{p['later_final_images']} at the others", "runs": {}}
    todo = [(arch, size) for size in p["sizes"] for arch in p["models"]]
    for i, (arch, size) in enumerate(todo):
        # the final trust check (100 images, ROAD, randomization) took 15-30 s a model at 28-64 px on an H200:
        # its full cost is measured at the first size; at the others it scores as many images as an epoch
        images = p["final_images"] if size == p["sizes"][0] else p["later_final_images"]
        label = f"{arch.removeprefix('torchvision:')}-{size}px"
        left = deadline - time.perf_counter()
        if left < 10:
            out["runs"][label] = {"skipped": "out of time"}
            continue
        overrides = [*data_overrides(size, 3, p["images"], p["eval_images"]), f"model.arch={arch}",
                     f"train.device={device}", "train.epochs=2", with_trust_images(p["stages"], images)]
        if arch == "allconv":
            overrides.append(f"model.width={p['width']}")
        try:
            synthetic_images(size, 3, p["images"], p["eval_images"])
            with time_limit(min(left, max(p["per_run"], left / (len(todo) - i)))):
                result, _, wall = interp_fit(overrides, tmp / f"cost-{label}")
        except OutOfTime:
            out["runs"][label] = {"skipped": "did not finish in its share of the time"}
            continue
        except Exception as exc:
            out["runs"][label] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        finally:
            _CACHE.pop((size, 3, p["images"], p["eval_images"], 10, 0), None)
            free_memory()
        first, middle, last = result.metrics

        def stages_of(row: dict[str, Any]) -> dict[str, float]:
            return {k.removeprefix("seconds/"): v for k, v in row.items() if k.startswith("seconds/")}

        out["runs"][label] = {"epoch_s": last["seconds"], "wall_s": round(wall, 2), "epoch0": stages_of(first),
                              "epoch1": stages_of(middle), "final": stages_of(last)}
        print(f"  stage costs {label}: epoch {last['seconds']} s, wall {wall:.1f} s", file=sys.stderr, flush=True)
    return out


# -- the whole run ------------------------------------------------------------------------------------
def plan(smoke: bool) -> dict[str, dict[str, Any]]:
    if smoke:
        small_trust = ["analysis.stages=[confusion, calibration, {top_losses: {k: 4, steps: 8}}, saliency, "
                       "integrated_gradients, gradcam, weights, neurons, activations, {dataset_map: {points: 50}}, "
                       "{embeddings: {points: 200}}, {trust: {images: 4, epoch_images: 2, "
                       "randomization_images: 2, road_percentages: [50], resamples: 100}}]"]
        return {
            "throughput": {"images": 512, "eval_images": 128, "width": 8, "batch": 128, "epochs": 2, "compile": False},
            "analysis_share": {"images": 512, "eval_images": 128, "width": 8, "batch": 128, "epochs": 2,
                               "stages": small_trust},
            "recipe": {"overrides": ["--set", "train.epochs=1", "--set", "model.width=8", "--set",
                                     "data.train_limit=256", *["--set", small_trust[0]]]},
            "torchrun": {"overrides": ["--set", "data.train_limit=256", "--set", "train.epochs=1", "--set",
                                       "analysis.stages=[confusion]"]},
            "stage_costs": {"images": 256, "eval_images": 64, "sizes": [28], "models": ["mlp", "allconv"], "width": 8,
                            "stages": small_trust, "per_run": 60, "final_images": 4, "later_final_images": 2},
        }
    return {
        "throughput": {"images": 50_000, "eval_images": 10_000, "width": 96, "batch": 512, "epochs": 4,
                       "compile": True},
        "analysis_share": {"images": 60_000, "eval_images": 10_000, "width": 96, "batch": 512, "epochs": 10,
                           "stages": []},
        "recipe": {"overrides": []},
        "torchrun": {"overrides": [*[x for o in data_overrides(32, 3, 50_000, 10_000) for x in ("--set", o)],
                                   "--set", "model.arch=allconv", "--set", "data.batch_size=512", "--set",
                                   "train.precision=bf16", "--set", "train.epochs=3", "--set",
                                   "analysis.stages=[confusion, {embeddings: {tsne: never}}]"]},
        "stage_costs": {"images": 10_000, "eval_images": 1_000, "sizes": [28, 64, 128],
                        "models": ["mlp", "allconv", "torchvision:resnet18"], "width": 96, "stages": [], "per_run": 60,
                        "final_images": 100, "later_final_images": 10},
    }


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cpu_threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    best = results.get("throughput", {}).get("variants", {}).get("bf16_channels_last", {})
    share = results.get("analysis_share", {}).get("analysis_share")
    return {
        "bf16_channels_last_images_per_s >= 100000": None if "interp_images_per_s" not in best else
        best["interp_images_per_s"] >= TARGETS["allconv_bf16_channels_last_images_per_s"],
        "interp_over_plain >= 0.95": None if "interp_over_plain" not in best else
        best["interp_over_plain"] >= TARGETS["interp_over_plain"],
        "analysis_share <= 0.10": None if share is None else share <= TARGETS["analysis_share"],
    }


def write(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, on the CPU, in about a minute")
    parser.add_argument("--budget", type=float, help="seconds for all the sections together (default 450; with "
                        "--smoke 1800, so that a slow machine still runs every section)")
    parser.add_argument("--out", type=Path, help="also write the JSON here, after every section")
    parser.add_argument("--only", nargs="+", help="run only these sections")
    parser.add_argument("--sizes", nargs="+", type=int, help="image sizes of the stage_costs section (28 64 128)")
    args = parser.parse_args()
    sys.modules.setdefault("gpu", sys.modules[__name__])  # the factory gpu:synthetic_images is this module's
    args.budget = args.budget or (1800 if args.smoke else 450)
    started = time.perf_counter()
    deadline = started + args.budget
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    results: dict[str, Any] = {"benchmark": "benchmarks/gpu.py", "mode": "smoke" if args.smoke else "full",
                               "environment": environment(device)}
    sections: dict[str, Callable[..., dict[str, Any]]] = {
        "throughput": throughput, "analysis_share": analysis_share, "torchrun": torchrun, "recipe": recipe,
        "stage_costs": stage_costs}
    # What each section may use at most, as a share of the budget, so that a slow one leaves time to the rest.
    # (On an H200 the throughput section took 89 s, the 10-epoch run 66 s after it — about 90 s when it ran
    # first in a fresh process —, torchrun 32 s, the recipe 51-63 s.)
    shares = {"throughput": 0.3, "analysis_share": 0.35, "torchrun": 0.1, "recipe": 0.2, "stage_costs": 1.0}
    steps = plan(args.smoke)
    if args.sizes:
        steps["stage_costs"]["sizes"] = args.sizes
    with tempfile.TemporaryDirectory() as folder:
        for name, section in sections.items():
            if args.only and name not in args.only:
                continue
            now = time.perf_counter()
            if deadline - now < 5:
                results[name] = {"skipped": "out of time"}
                continue
            print(f"{name} …", file=sys.stderr, flush=True)
            end = min(deadline, now + shares[name] * args.budget)
            try:
                results[name] = section(steps[name], device, Path(folder), end)
            except OutOfTime:
                results[name] = {"skipped": f"did not finish in {end - now:.0f} s"}
            except subprocess.TimeoutExpired:
                results[name] = {"skipped": f"did not finish in {end - now:.0f} s"}
            except Exception as exc:  # one section's failure is recorded; the others still run
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
            results[name] = {**results[name], "section_s": round(time.perf_counter() - now, 1)}
            free_memory()
            write(args.out, results)
    results["targets"] = "not judged at smoke sizes" if args.smoke else verdicts(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write(args.out, results)
    print(json.dumps(results, indent=1))


def torchrun_child() -> None:
    """Under torchrun: ``interp`` as the command line runs it, saying which process group it joined."""
    import importlib

    fit_module = importlib.import_module("interp.train.fit")
    real = fit_module.setup

    def setup(device: torch.device):  # type: ignore[no-untyped-def]
        dist = real(device)
        from torch import distributed

        joined = distributed.is_initialized()
        print("GROUP " + json.dumps({"backend": distributed.get_backend() if joined else None,
                                     "world": dist.world, "joined": dist.joined}), flush=True)
        return dist

    fit_module.setup = setup
    from interp.cli import main as interp_main

    sys.argv = ["interp", *sys.argv[2:]]
    interp_main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--torchrun-child"]:
        torchrun_child()
    else:
        main()
