"""Whether each attribution map deserves belief: deletion/insertion under two baselines and ROAD, against
random orders and an edge detector, model (and optionally data) randomization, bootstrap intervals."""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from ..trust import Cascade, Check
    from .base import StageContext

REFERENCES = ("edges", "random")  # maps that know nothing of the model, scored like the methods
CORRELATION_LIMIT = 0.5  # the same as interp.trust.CORRELATION_LIMIT (checked by a test)
COMPLETENESS_LIMIT = 0.05
REFERENCE_COLOURS = {"edges": "0.35", "random": "0.6"}  # the methods' colours are theirs (interp.attribution)
STYLES = {"edges": "--", "random": ":"}
SLOW_SECONDS = 10.0  # a final check expected to take longer than this is announced, with how to make it cheaper
# Images are scored in chunks: the probe batch, then CHUNK at a time; after each a method stops once its verdict
# is decided: a check fails, or every check's 95 % interval lies on one side of its limit or is futile — the
# chance that scoring up to the cap would clear it, if its mean stayed, is below FUTILITY.
CHUNK, FUTILITY = 10, 0.1
# The randomization cascade runs on 10 images, then on the rest when a check is still open; the steps between
# the top ones and the last (which the verdict does not read) are computed on the first 5 only, for the figure.
CASCADE_FIRST, CASCADE_MIDDLE = 10, 5
# (deletion-like, insertion-like) metrics of each perturbation: deletion falls, insertion rises for a good map
PERTURBATIONS = {"black": ("deletion/black", "insertion/black"), "blur": ("deletion/blur", "insertion/blur"),
                 "road": ("road_morf", "road_lerf")}


class TrustOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The methods scored are analysis.methods (one list for the drawing and the scoring).
    # Images scored at the final epoch (and by `interp analyze`), at most: the probe batch first, then more
    # evaluation images, class-balanced and seeded (None: the probe batch alone). A method is scored on no more
    # images once its verdict is decided (looked at after the probe batch and every 10 more). `epoch_images`:
    # the same at every other
    # epoch, fewer because the stage runs every epoch (the all-conv net of width 16 on 2 CPU cores: about
    # 0.3 s per image).
    images: int | None = Field(100, ge=1, le=10_000)
    epoch_images: int | None = Field(10, ge=1, le=10_000)
    steps: int = Field(20, ge=2, le=1000)  # deletion/insertion steps from 0 to 100 % of the pixels
    # Coarse to fine: every fourth step is computed first; the step halfway between two computed ones whose
    # probabilities differ by at most this is their mean, else computed, down to every step. None: all.
    curve_tolerance: float | None = Field(0.02, ge=0, le=1)
    # What deleted pixels become (and what insertion starts from): black, a blurred copy of the image.
    baselines: list[Literal["black", "blur"]] = Field(default=["black", "blur"], min_length=1)
    blur_sigma: float = Field(0.1, gt=0, le=1)  # the blur's standard deviation, as a fraction of the image side
    # ROAD: the removed pixels are imputed from their neighbours (a sparse solve per image and percentage:
    # the costliest metric, so by default at the final epoch only).
    road: Literal["final", "always", "never"] = "final"
    road_percentages: list[float] = Field(default_factory=lambda: [10.0, 30.0, 50.0, 70.0, 90.0], min_length=1)
    road_noise: float = Field(0.01, ge=0, le=1)  # imputation noise std, as a fraction of the pixel value range
    random_rankings: int = Field(1, ge=1, le=100)  # random orders per image averaged for the "random" reference
    randomization: Literal["final", "always", "never"] = "final"
    randomization_images: int = Field(20, ge=1, le=10_000)  # the first N of the images go through the cascade
    # Adebayo's data randomization test at the final epoch: a copy of the model trained as long on shuffled
    # labels (Adam, lr 1e-3, batches of 128) — a second training run, hence off by default.
    data_randomization: bool = False
    # integrated-gradients steps (expected gradients: samples); Captum integrates by Gauss–Legendre, whose 20
    # points give the same scores as 50 to 0.001 on the default run (the IG stage measures completeness with 50)
    ig_steps: int = Field(20, ge=2, le=2000)
    # the same in the randomization cascade (and the data randomization test): they compare two maps made the
    # same way, so they need the maps' ranks, not an accurate integral — 10 points moved ρ by at most 0.02
    # against 20 on the MLP, the all-conv net and a ResNet-18 (README, "Cost")
    randomization_ig_steps: int = Field(10, ge=2, le=2000)
    noise_baselines: int = Field(4, ge=1, le=1000)  # expected gradients: uniform-noise references
    smoothgrad_samples: int = Field(8, ge=1, le=1000)
    resamples: int = Field(1000, ge=100, le=100_000)  # bootstrap resamples for the 95 % intervals
    seed: int = 0  # image choice, random orders, tie-breaks, ROAD's noise, re-initialized weights, bootstrap

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, value: Any) -> Any:
        if isinstance(value, dict) and "methods" in value:
            raise ValueError("methods: the methods are analysis.methods now (one list for the drawing and the "
                             "scoring); move the list there")
        return value

    @field_validator("road_percentages")
    @classmethod
    def _percent(cls, value: list[float]) -> list[float]:
        if any(not 0 < p < 100 for p in value):
            raise ValueError("percentages lie strictly between 0 and 100")
        return sorted(value)


@register_stage
class TrustStage(Stage):
    name = "trust"
    description = ("a number beside every map: deletion/insertion (black and blurred baselines) and ROAD against "
                   "random orders and a Sobel edge map, with bootstrap intervals; model randomization at the final "
                   "epoch; a verdict table")
    Options = TrustOptions
    runs_after = ("saliency", "integrated_gradients", "gradcam", "attributions")  # after the maps are drawn

    def methods(self, ctx: StageContext) -> tuple[list[str], dict[str, str]]:
        """The methods of ``analysis.methods`` that can run on this model, and why each other one cannot."""
        from ..attribution import DEFAULT_METHODS, method_class

        chosen, skipped = [], {}
        for name in ctx.methods or DEFAULT_METHODS:
            reason = method_class(name)().skip_reason(ctx.model, ctx.probe.x)
            if reason:
                skipped[name] = reason
            else:
                chosen.append(name)
        return chosen, skipped

    def compute(self, method: str, model: nn.Module, x: Tensor, y: Tensor, black: Tensor,
                white: Tensor | None = None, steps: int | None = None) -> Tensor:
        """``method``'s maps (B, H, W) for images ``x`` with this stage's options (``steps``: integration
        points, default ``ig_steps``), on the CPU."""
        from ..attribution import method_class

        return method_class(method)().map(model, x, y, baseline=black, white=white, steps=steps or self.options.ig_steps,
                                          samples=self.options.smoothgrad_samples, blur_sigma=self.options.blur_sigma,
                                          references=self.options.noise_baselines).float().cpu()

    def images(self, ctx: StageContext) -> Tensor:
        """Positions in the evaluation set of the images scored: the probe batch, then class-balanced extra
        images (round-robin over the classes in a seeded order) up to ``images`` (``epoch_images`` before the
        final epoch)."""
        import torch

        probe = ctx.probe.indices.cpu()
        wanted = (self.options.images if ctx.final else self.options.epoch_images) or len(probe)
        if wanted <= len(probe):
            return probe[:wanted]
        labels = ctx.data.eval_y.cpu()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.options.seed))
        order = order[~torch.isin(order, probe)]
        classes = labels[order]
        rank = torch.zeros_like(order)  # how many of the same class come earlier in the order
        for c in classes.unique():
            where = classes == c
            rank[where] = torch.arange(int(where.sum()))
        extra = order[torch.argsort(rank * (int(classes.max()) + 1) + classes, stable=True)]
        return torch.cat([probe, extra[: wanted - len(probe)]])

    def run(self, ctx: StageContext) -> Summary:
        import torch

        from ..attribution import white

        options = self.options
        data, model = ctx.data, ctx.model
        index = self.images(ctx).to(data.device)
        methods, skipped = self.methods(ctx)
        road = options.road == "always" or (options.road == "final" and ctx.final)
        cascade = options.randomization == "always" or (options.randomization == "final" and ctx.final)
        torch.manual_seed(options.seed)  # SmoothGrad's and expected gradients' noise (the runner restores the RNG)
        rankings = torch.Generator().manual_seed(options.seed)  # the random orders, image after image
        parts: list[dict[str, Any]] = []
        done, active = 0, list(methods)  # the methods still scored: each stops once its verdict is decided
        while done < len(index) and active:
            upto = min(len(index), max(CHUNK, len(ctx.probe.indices)) if not done else done + CHUNK)
            ctx.status(f"scoring {len(active)} method{'s' * (len(active) != 1)} on images {done + 1}–{upto} of at "
                       f"most {len(index)}")
            start = time.perf_counter()
            parts.append(self.score(ctx, methods, active, index[done:upto], road, rankings))
            if not done:
                self.announce(ctx, time.perf_counter() - start, upto, len(index), parts[0]["map_seconds"], cascade,
                              len(methods))
            done = upto
            if done < len(index):
                joined = _joined(parts, "scores")
                active = [m for m in active if not self.decided(m, joined, len(index))]
        images = {name: sum(len(p["x"]) for p in parts if name in p["scored"]) for name in [*methods, *REFERENCES]}
        x, y = torch.cat([p["x"] for p in parts]), torch.cat([p["y"] for p in parts])
        index = index[:len(x)]
        black = data.black(x)
        bright = white(black, data)
        maps = {name: torch.cat([p["maps"][name] for p in parts]) for name in parts[0]["maps"]}
        broken = {name: torch.cat([p["broken"][name] for p in parts]) for name in parts[0]["broken"]}
        scores, curves = _joined(parts, "scores"), _joined(parts, "curves")

        cascades: dict[str, Cascade] = {}
        if cascade:
            cascades = self.randomize(ctx, model, methods, x, y, black, bright)
        shuffled: dict[str, np.ndarray] = {}
        notes = [f"{name}: not scored ({reason})" for name, reason in skipped.items()]
        if options.data_randomization and ctx.final:
            if len(data.train_x):
                shuffled = self.shuffle_labels(ctx, model, x, y, black, bright, methods)
            else:
                notes.append("data randomization needs the training images, which this run does not have")
        mass: dict[str, np.ndarray] = {}
        masks = data.eval_masks
        if masks is not None and len(masks) == len(data.eval_x):
            from ..trust import mass_inside

            generator = torch.Generator().manual_seed(options.seed)
            region = masks[index].cpu()
            mass = {name: mass_inside(values, region).numpy() for name, values in maps.items()}
            mass["random"] = mass_inside(torch.rand(maps["edges"].shape, generator=generator), region).numpy()

        results = self.judge(ctx, methods, scores, broken, cascades, shuffled, mass, images)
        self.record(ctx, results)
        self.draw(ctx, methods, results, curves, cascades, _span(images.values()))
        early = [m for m in methods if images[m] < len(x)]
        if early:
            notes.append("scored on fewer images, their verdicts decided earlier: " +
                         ", ".join(f"{m} ({images[m]})" for m in early))
        return self.summarize(ctx, methods, results, cascades, shuffled, mass, len(x), road, notes)

    def score(self, ctx: StageContext, methods: list[str], active: list[str], index: Tensor, road: bool,
              rankings: torch.Generator) -> dict[str, Any]:
        """Maps, degenerate maps, per-image scores and curves of the images at ``index`` (one chunk), for the
        ``active`` methods and the references; the other methods' are NaN (not scored)."""
        import torch

        from ..attribution import blurred, white
        from ..trust import degenerate, sobel_map

        data, options = ctx.data, self.options
        x = data.normalize(data.eval_x[index])
        y = data.eval_y[index]
        black = data.black(x)
        bright = white(black, data)
        start = time.perf_counter()
        maps = {m: self.compute(m, ctx.model, x, y, black, bright) for m in active}
        map_seconds = (time.perf_counter() - start) / len(x)
        maps["edges"] = sobel_map(data.denormalize(x))
        broken = {m: degenerate(values) for m, values in maps.items()}
        baselines = {b: black if b == "black" else blurred(x, options.blur_sigma) for b in options.baselines}
        scores, curves = self.perturb(ctx.model, x, y, maps, baselines, road, rankings)
        for name, broke in broken.items():  # a degenerate map ranks pixels by a coin toss: left out
            for values in [*scores[name].values(), *curves[name].values()]:
                values[broke.numpy()] = math.nan
        for name in methods:
            if name not in active:
                scores[name] = {k: np.full_like(v, math.nan) for k, v in scores["random"].items()}
                curves[name] = {k: np.full_like(v, math.nan) for k, v in curves["random"].items()}
                maps[name] = torch.full(maps["edges"].shape, math.nan)
                broken[name] = torch.zeros(len(x), dtype=torch.bool)
        return {"x": x, "y": y, "maps": maps, "broken": broken, "scores": scores, "curves": curves,
                "map_seconds": map_seconds, "scored": [*active, *REFERENCES]}

    def decided(self, method: str, scores: dict[str, dict[str, np.ndarray]], most: int) -> bool:
        """Whether ``method``'s verdict is settled by the images scored so far, ``most`` being the cap: a
        check fails (doubt), or every check is clear of its limit or :func:`futile`."""
        count = len(next(iter(scores["random"].values())))
        checks = self.checks(method, scores)
        if any(c.outcome == "fail" for c in checks):
            return True
        return not any(c.outcome == "uncertain" and not futile(c, count, most) for c in checks)

    def announce(self, ctx: StageContext, seconds: float, count: int, most: int, map_seconds: float, cascade: bool,
                 methods: int) -> None:
        """Before a long final check: how long it should take at most, and which option makes it cheaper."""
        from ..trust import cascade_layers, middle_steps

        steps = len(cascade_layers(ctx.model)) if cascade else 0
        n = min(self.options.randomization_images, most)
        middle, verdict = min(CASCADE_MIDDLE, n), steps - len(middle_steps(steps))  # see randomize()
        maps = middle * (steps + 1) + (n - middle) * (verdict + 1) if steps else 0  # each image's trained map too
        expected = seconds / count * (most - count) + maps * map_seconds
        if expected < SLOW_SECONDS:
            return
        parts = [f"scoring up to {most - count} more images ({seconds / count:.1f} s each)"] if most > count else []
        if steps:
            parts.append(f"the randomization cascade over {steps} block{'s' * (steps != 1)} on up to {n} images "
                         f"({maps * map_seconds:.0f} s)")
        ctx.notice(f"trust: the check at epoch {ctx.epoch} should take about {expected:.0f} s more at most: "
                   f"{' and '.join(parts)}; it stops scoring a method once its verdict is decided. Cheaper: "
                   f"--set analysis.stages.trust.images={max(2 * CHUNK, count)} (fewer images, wider intervals), "
                   "--set analysis.stages.trust.randomization_images=5, or analysis.methods without the "
                   f"integrated-gradients variants ({methods} methods now)")

    # -- computing --------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, maps: dict[str, Tensor], baselines: dict[str, Tensor],
                road: bool, generator: torch.Generator | None = None,
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
        """Per map name, per metric: the per-image scores (B,) and the per-image curves (B, points);
        ``generator`` draws the random orders (default: a fresh one from the seed)."""
        import torch

        from ..trust import (
            auc,
            class_probabilities,
            perturbation_curves,
            random_rankings,
            rank_pixels,
            road_curves,
        )

        options = self.options
        pixels = x.shape[-2] * x.shape[-1]
        spread = float(x.max() - x.min()) or 1.0
        generator = generator or torch.Generator().manual_seed(options.seed)
        rankings = {"random": [random_rankings(len(x), pixels, generator) for _ in range(options.random_rankings)]}
        for name, values in maps.items():  # the same tie-break stream for every map: equal maps, equal scores
            rankings[name] = [rank_pixels(values, torch.Generator().manual_seed(options.seed + 1))]

        image = class_probabilities(model, x, y)  # p(true class) of the image and of each baseline: the ends
        gone = {b: class_probabilities(model, reference, y) for b, reference in baselines.items()}  # of every curve

        def curves_of(ranking: Tensor) -> dict[str, Tensor]:
            out = {}
            for baseline, reference in baselines.items():
                for mode, ends in (("deletion", (image, gone[baseline])), ("insertion", (gone[baseline], image))):
                    out[f"{mode}/{baseline}"] = perturbation_curves(model, x, y, reference, ranking, options.steps, mode,
                                                                    tolerance=options.curve_tolerance, ends=ends)
            if road:
                for order in ("morf", "lerf"):
                    out[f"road_{order}"] = road_curves(model, x, y, ranking, options.road_percentages, order,  # type: ignore[arg-type]
                                                       options.road_noise * spread, options.seed)
            return out

        start = image.double().numpy()
        scores: dict[str, dict[str, np.ndarray]] = {}
        curves: dict[str, dict[str, np.ndarray]] = {}
        for name, orders in rankings.items():
            each = [curves_of(ranking) for ranking in orders]
            curves[name] = {k: torch.stack([c[k] for c in each]).mean(0).double().numpy() for k in each[0]}
            scores[name] = {k: (auc(torch.from_numpy(v)).numpy() if k.startswith(("deletion", "insertion"))
                                else v.mean(axis=1)) for k, v in curves[name].items()}
            curves[name]["start"] = start.copy()  # p(true class) on the untouched image
        return scores, curves

    def randomize(self, ctx: StageContext, model: nn.Module, methods: list[str], x: Tensor, y: Tensor, black: Tensor,
                  bright: Tensor) -> dict[str, Cascade]:
        """The cascade of every method and of the two references (on the first ``randomization_images``)."""
        import torch

        from ..trust import foreground, randomization_cascade, sobel_map

        n = min(self.options.randomization_images, len(x))
        first, middle = min(CASCADE_FIRST, n), min(CASCADE_MIDDLE, n)
        xs, ys, blacks, brights = x[:n], y[:n], black[:n], bright[:n]
        mask = foreground(xs, blacks)
        cascades = {}
        for k, method in enumerate(methods, start=1):
            def images(low: int, high: int, at: Collection[int] | None = None, method: str = method) -> Cascade:
                def compute(net: nn.Module) -> Tensor:
                    return self.compute(method, net, xs[low:high], ys[low:high], blacks[low:high],
                                        brights[low:high], self.options.randomization_ig_steps)

                return randomization_cascade(model, compute, seed=self.options.seed, mask=mask[low:high], at=at)

            ctx.status(f"randomization cascade of {method} ({k} of {len(methods)}) on {first} images")
            cascade = images(0, middle)  # every step, for the figure
            verdict = [k for k in range(len(cascade.layers)) if k not in cascade.middle]  # those it reads
            if middle < first:
                cascade = cascade.joined(images(middle, first, verdict))
            if first < n and not self._settled(cascade, n):
                ctx.status(f"randomization cascade of {method} ({k} of {len(methods)}) on {n - first} more images")
                cascade = cascade.joined(images(first, n, verdict))
            cascades[method] = cascade
        edges = sobel_map(xs)  # knows nothing of the weights: ρ stays 1
        cascades["edges"] = randomization_cascade(model, lambda net: edges, seed=self.options.seed, mask=mask)
        noise = torch.Generator().manual_seed(self.options.seed)  # a fresh random map at every step: ρ ≈ 0
        cascades["random"] = randomization_cascade(model, lambda net: torch.rand(edges.shape, generator=noise),
                                                   seed=self.options.seed, mask=mask)
        return cascades

    def _settled(self, cascade: Cascade, most: int) -> bool:
        """Whether both randomization checks are decided by the images so far (clear of the limit, or
        :func:`futile` with ``most`` images)."""
        from ..trust import Check, bootstrap_interval

        for values in (cascade.top_values(), cascade.final_values()):
            low, high = bootstrap_interval(values, self.options.resamples, self.options.seed)
            check = Check("ρ", "", "", _nanmean(values), low, high, CORRELATION_LIMIT)
            if check.outcome == "uncertain" and not futile(check, len(values), most):
                return False
        return True

    def shuffle_labels(self, ctx: StageContext, model: nn.Module, x: Tensor, y: Tensor, black: Tensor,
                       bright: Tensor, methods: list[str]) -> dict[str, np.ndarray]:
        """ρ of |map| on the foreground between the model and a copy trained as long on shuffled labels."""
        import torch

        from ..trust import foreground, shuffled_label_copy, similarities

        data = ctx.data
        copy = shuffled_label_copy(model, data.train_x, data.train_y, data.normalize, max(1, ctx.epoch),
                                   ctx.initial_state, seed=self.options.seed)
        n = min(self.options.randomization_images, len(x))
        mask = foreground(x[:n], black[:n])
        out = {}
        for method in methods:
            pair = []
            for net in (model, copy):
                torch.manual_seed(self.options.seed + 1)  # the same noise for both maps
                pair.append(self.compute(method, net, x[:n], y[:n], black[:n], bright[:n],
                                         self.options.randomization_ig_steps))
            out[method] = similarities(pair[0], pair[1], mask)["spearman_abs_foreground"]
        return out

    # -- judging ---------------------------------------------------------------------------------
    def judge(self, ctx: StageContext, methods: list[str], scores: dict[str, dict[str, np.ndarray]],
              broken: dict[str, Tensor], cascades: dict[str, Cascade], shuffled: dict[str, np.ndarray],
              mass: dict[str, np.ndarray], images: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        """Means, intervals, checks and verdicts, per method and reference."""
        from ..trust import Check, bootstrap_interval, verdict

        def interval(values: np.ndarray) -> tuple[float, float]:
            return bootstrap_interval(values, self.options.resamples, self.options.seed)

        def summary(values: np.ndarray) -> dict[str, Any]:
            finite = values[np.isfinite(values)]
            return {"mean": float(finite.mean()) if len(finite) else math.nan, "interval": list(interval(values))}

        results: dict[str, dict[str, Any]] = {}
        for name in [*methods, *REFERENCES]:
            result: dict[str, Any] = {"metrics": {k: summary(v) for k, v in scores[name].items()}}
            result["images"] = (images or {}).get(name, len(next(iter(scores[name].values()))))
            result["degenerate"] = int(broken[name].sum()) if name in broken else 0
            if name in cascades and cascades[name].scores:
                cascade = cascades[name]
                result["randomization"] = {m: summary(cascade.final_values(m)) for m in cascade.scores[-1]}
                result["randomization"]["measure"] = cascade.measure
                result["cascade"] = dict(zip(cascade.layers, cascade.correlations, strict=True))
                result["randomization_top"] = summary(cascade.top_values())
                result["randomization_top"]["layers"] = cascade.layers[: cascade.top]
            if name in shuffled:
                result["data_randomization"] = summary(shuffled[name])
            if name in mass:
                result["mass_in_region"] = summary(mass[name])
            results[name] = result

        for method in methods:
            result = results[method]
            checks = self.checks(method, scores)
            if method in cascades and cascades[method].scores:
                cascade = cascades[method]
                if len(cascade.layers) > 1:  # the top alone (one layer of an MLP is all but the input's)
                    values = cascade.top_values()
                    low, high = interval(values)
                    rho = _nanmean(values)
                    top = ", ".join(_short(layer) for layer in cascade.layers[: cascade.top])
                    checks.append(Check("ρ after the top layers", f"survives re-initializing {top} (ρ {rho:.2f})",
                                        f"ρ top {rho:.2f} [{low:.2f}, {high:.2f}] vs {CORRELATION_LIMIT}", rho, low,
                                        high, CORRELATION_LIMIT))
                values = cascade.final_values()
                low, high = interval(values)
                rho = _nanmean(values)
                checks.append(Check("ρ after randomization", f"ignores weights (ρ {rho:.2f})",
                                    f"ρ {rho:.2f} [{low:.2f}, {high:.2f}] vs {CORRELATION_LIMIT}", rho, low, high,
                                    CORRELATION_LIMIT))
            if method in shuffled:
                values = shuffled[method]
                low, high = interval(values)
                rho = _nanmean(values)
                checks.append(Check("ρ with shuffled labels", f"ignores labels (ρ {rho:.2f})",
                                    f"ρ labels {rho:.2f} [{low:.2f}, {high:.2f}] vs {CORRELATION_LIMIT}", rho, low,
                                    high, CORRELATION_LIMIT))
            failed = []
            error = self.completeness(ctx, method)
            result["completeness_error"] = error
            if error is not None and error > COMPLETENESS_LIMIT:
                failed.append(f"incomplete ({error:.0%})")
            if result["degenerate"] == result["images"]:
                failed.append("every map degenerate")
            result["checks"] = [c.to_json() for c in checks]
            result["verdict"] = verdict(checks, failed)
        return results

    def checks(self, method: str, scores: dict[str, dict[str, np.ndarray]]) -> list[Check]:
        """The perturbation checks of ``method``: each metric against random orders, image by image, and its
        faithfulness against the edge map."""
        from ..trust import Check, bootstrap_interval

        def interval(values: np.ndarray) -> tuple[float, float]:
            return bootstrap_interval(values, self.options.resamples, self.options.seed)

        checks = []
        for metric, values in scores[method].items():
            difference = values - scores["random"][metric]  # paired: the same images (NaN: a degenerate map)
            low, high = interval(difference)
            where = _where(metric)
            better_low = metric.startswith(("deletion", "road_morf"))
            short = "del." if metric.startswith("deletion") else "ins." if metric.startswith("insertion") \
                else "MoRF" if metric == "road_morf" else "LeRF"
            checks.append(Check(f"{short} vs random ({where})", f"{short} {'≥' if better_low else '≤'} random ({where})",
                                f"{short} ≈ random ({where})", _nanmean(difference), low, high, 0.0,
                                above=not better_low))
        mine, edges = _faithfulness(scores[method]), _faithfulness(scores["edges"])
        if mine is not None and edges is not None:
            low, high = interval(mine - edges)
            checks.append(Check("faithfulness vs edges", "no better than edges", "≈ edges",
                                _nanmean(mine - edges), low, high, 0.0, above=True))
        return checks

    @staticmethod
    def completeness(ctx: StageContext, method: str) -> float | None:
        """The integrated-gradients stage's median completeness error for ``method`` (None: not measured)."""
        return ctx.completeness.get(method)

    # -- output ----------------------------------------------------------------------------------
    def record(self, ctx: StageContext, results: dict[str, dict[str, Any]]) -> None:
        for name, result in results.items():
            for metric, value in result["metrics"].items():
                ctx.record(f"{name}/{_key(metric)}", value["mean"])
            if "randomization" in result:
                found = result["randomization"]
                ctx.record(f"{name}/randomization_correlation", found[found["measure"]]["mean"])
                ctx.record(f"{name}/randomization_correlation/all_pixels", found["spearman_abs"]["mean"])
                ctx.record(f"{name}/randomization_correlation/signed", found["spearman_signed_foreground"]["mean"])
                ctx.record(f"{name}/randomization_ssim", found["ssim"]["mean"])
                ctx.record(f"{name}/randomization_correlation/top", result["randomization_top"]["mean"])
            if "data_randomization" in result:
                ctx.record(f"{name}/data_randomization_correlation", result["data_randomization"]["mean"])
            if "mass_in_region" in result:
                ctx.record(f"{name}/mass_in_region", result["mass_in_region"]["mean"])
            if name not in REFERENCES:
                ctx.record(f"{name}/degenerate_maps", result["degenerate"])

    def summarize(self, ctx: StageContext, methods: list[str], results: dict[str, dict[str, Any]],
                  cascades: dict[str, Cascade], shuffled: dict[str, np.ndarray], mass: dict[str, np.ndarray],
                  count: int, road: bool, notes: list[str]) -> Summary:
        options = self.options
        columns = ["method"]
        for baseline in options.baselines:
            columns += [f"{baseline}\ndel. ↓", f"{baseline}\nins. ↑"]
        if options.road != "never":
            columns += ["ROAD\nMoRF ↓", "ROAD\nLeRF ↑"]
        columns += ["ρ top\nlayers ↓", "ρ random\nweights ↓"]
        if options.data_randomization:
            columns.append("ρ shuffled\nlabels ↓")
        if mass:
            columns.append("mass in\npatch ↑")
        columns.append("verdict")

        rows, said = [], []
        for name in [*methods, *REFERENCES]:
            result = results[name]
            metrics = result["metrics"]
            row: list[Any] = [name]
            for baseline in options.baselines:
                row += [metrics[f"deletion/{baseline}"]["mean"], metrics[f"insertion/{baseline}"]["mean"]]
            if options.road != "never":
                row += [metrics[k]["mean"] if k in metrics else None for k in ("road_morf", "road_lerf")]
            found = result.get("randomization")
            row.append(result["randomization_top"]["mean"] if found else None)
            row.append(found[found["measure"]]["mean"] if found else None)
            if options.data_randomization:
                row.append(result["data_randomization"]["mean"] if "data_randomization" in result else None)
            if mass:
                row.append(result["mass_in_region"]["mean"] if "mass_in_region" in result else None)
            verdict = result.get("verdict", "reference")
            row.append(verdict.split(":")[0])
            rows.append(row)
            if verdict not in ("trust", "reference"):
                word, _, reasons = verdict.partition(": ")
                said.append(f"{name}: {word} ({reasons})")
            if result["degenerate"]:
                said.append(f"{name}: {result['degenerate']} of {result['images']} maps are degenerate (constant or "
                            "all zero) and left out of its numbers")

        probe = len(ctx.probe.indices)
        which = f"the {count} probe images" if count <= probe else \
            f"{count} images: the {probe} probe images and {count - probe} more, class-balanced"
        lines = [f"trust (epoch {ctx.epoch}, {which}): deletion and MoRF should fall below random, insertion and "
                 "LeRF rise above it under every baseline, and the map should beat the edge map; ρ is the rank "
                 "correlation of |map| on the image's foreground with the trained map's, after re-initializing the "
                 "top third of the layers (ρ top: those that decide the class) and every layer (limit "
                 f"{CORRELATION_LIMIT} for both); a check whose 95 % interval straddles its limit makes the verdict "
                 "'uncertain'",
                 "edges: the Sobel edge map of the image; random: random pixel orders — neither knows the model"]
        lines += said + notes
        if not road and options.road != "never":
            lines.append("ROAD runs at the final epoch (trust: {road: always} for every epoch)")
        if not cascades and options.randomization != "never":
            lines.append("the randomization check runs at the final epoch (trust: {randomization: always} for every "
                         "epoch)")
        ctx.save_json("trust.json", {"epoch": ctx.epoch, "images": count, "baselines": list(options.baselines),
                                     "road_percentages": list(options.road_percentages) if road else None,
                                     "methods": {m: results[m] for m in methods},
                                     "references": {r: results[r] for r in REFERENCES}})  # strict JSON
        marks = [{"trust": "good", "doubt": "bad", "uncertain": "bad"}.get(row[-1]) for row in rows]
        return Summary("Can you trust the maps?", columns, rows, lines, marks=marks)

    def draw(self, ctx: StageContext, methods: list[str], results: dict[str, dict[str, Any]],
             curves: dict[str, dict[str, np.ndarray]], cascades: dict[str, Cascade], count: int | str) -> None:
        names = [*methods, *REFERENCES]
        rows: list[dict[str, Any]] = []
        for baseline, (down, up) in PERTURBATIONS.items():
            if down not in curves["random"]:
                if baseline == "road" and self.options.road == "final":  # its row says when, so the size stays
                    rows.append({"titles": ["ROAD: most relevant removed first (MoRF)",
                                            "ROAD: least relevant removed first (LeRF)"],
                                 "note": "ROAD runs at the last epoch\n(trust: {road: always}\nfor every epoch)"})
                continue
            if baseline == "road":
                x = [0.0, *[p / 100 for p in self.options.road_percentages]]
                titles = ("ROAD: most relevant removed first (MoRF)", "ROAD: least relevant removed first (LeRF)")
                labels = ["fraction of pixels removed (imputed from their neighbours)"] * 2
            else:
                x = list(np.linspace(0, 1, self.options.steps + 1))
                image = "black image" if baseline == "black" else "blurred image"
                titles = (f"deletion: pixels become the {image}", f"insertion: pixels revealed on the {image}")
                labels = ["fraction of pixels deleted, most important first",
                          "fraction of pixels inserted, most important first"]
            lines = []
            for name in names:
                pair = []
                for metric in (down, up):
                    values = curves[name][metric]  # (B, points), NaN rows for degenerate maps
                    if baseline == "road":  # the curve starts at the unperturbed image
                        values = np.concatenate([curves[name]["start"][:, None], values], axis=1)
                    pair.append(_mean_curve(values))
                lines.append({"name": name, "colour": colour(name), "style": STYLES.get(name, "-"), "down": pair[0],
                              "up": pair[1], "scores": [results[name]["metrics"][down]["mean"],
                                                        results[name]["metrics"][up]["mean"]],
                              "images": results[name]["images"]})
            rows.append({"x": x, "titles": list(titles), "xlabels": labels, "lines": lines,
                         "score": "mean over percentages" if baseline == "road" else "AUC"})
        ctx.draw("deletion_insertion", draw_curves, rows, ctx.epoch, count)
        if cascades and next(iter(cascades.values())).layers:
            self.draw_cascades(ctx, cascades)

    def draw_cascades(self, ctx: StageContext, cascades: dict[str, Cascade]) -> None:
        layers = next(iter(cascades.values())).layers
        panels = {name: {m: [1.0, *c.mean(m)] for m in c.scores[-1]} for name, c in cascades.items()}  # 1: itself
        first = next(iter(cascades.values()))
        top, middle = first.top, first.middle

        def counted(steps: Collection[int]) -> str:  # the methods' images (the references go over all of them)
            return _span([int((~c.maps[k].isnan().flatten(1).all(1)).sum()) for name, c in cascades.items()
                          for k in steps if name not in REFERENCES or len(cascades) == len(REFERENCES)])

        images = counted([k for k in range(len(layers)) if k not in middle])
        fewer = counted(middle) if middle and counted(middle) != images else None
        ctx.draw("randomization", draw_randomization, [_short(layer) for layer in layers], panels,
                 {name: colour(name) for name in cascades}, ctx.epoch, images, top, fewer)

        methods = [m for m in cascades if m not in REFERENCES]
        if methods:
            ctx.draw("randomization_maps", draw_cascade_maps, ctx.pixels(0), methods,
                     {m: (cascades[m].trained[0].abs().numpy(), [v[0].abs().numpy() for v in cascades[m].maps],
                          list(cascades[m].correlations)) for m in methods},
                     [_short(layer) for layer in layers], ctx.epoch, images)


def colour(name: str) -> str:
    """A method's colour in every plot (its own, from the registry), or a reference's grey."""
    from ..attribution import method_class

    return REFERENCE_COLOURS.get(name) or method_class(name).colour


def _span(counts: Collection[int]) -> str:
    """'20' or '20–50': how many images means are over."""
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}–{high}"


def futile(check: Check, count: int, most: int) -> bool:
    """Whether scoring more images (up to ``most``; ``count`` so far) is unlikely to take ``check``'s
    interval clear of its limit: if its mean stayed where it is, the chance that the interval at ``most``
    images would clear it is below :data:`FUTILITY` (the conditional power of group-sequential trials; the
    per-image spread is read from the interval's width)."""
    from statistics import NormalDist

    if count >= most:
        return True
    sigma = (check.high - check.low) / (2 * 1.96) * math.sqrt(count)  # per-image standard deviation
    reach = 1.96 * sigma / math.sqrt(most)  # the interval's half-width at the cap
    spread = sigma * math.sqrt(most - count) / most  # how far the mean can still move by then
    distance = abs(check.value - check.limit)
    if spread <= 0:
        return distance <= reach
    return NormalDist().cdf((distance - reach) / spread) < FUTILITY


def _joined(parts: list[dict[str, Any]], key: str) -> dict[str, dict[str, np.ndarray]]:
    """The chunks' per-image ``scores`` or ``curves`` (name → metric → array), joined image after image."""
    first = parts[0][key]
    return {name: {metric: np.concatenate([p[key][name][metric] for p in parts]) for metric in first[name]}
            for name in first}


def _where(metric: str) -> str:
    return "ROAD" if metric.startswith("road") else metric.split("/")[1]


def _key(metric: str) -> str:
    """'deletion/black' → 'deletion_auc' (the original key), 'insertion/blur' → 'insertion_auc/blur',
    'road_morf' → 'road_morf'."""
    if "/" not in metric:
        return metric
    mode, baseline = metric.split("/")
    return f"{mode}_auc" if baseline == "black" else f"{mode}_auc/{baseline}"


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _faithfulness(scores: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per image, the mean over the perturbations of (insertion − deletion) and (LeRF − MoRF)."""
    gaps = [scores[up] - scores[down] for down, up in PERTURBATIONS.values() if down in scores]
    return np.mean(gaps, axis=0) if gaps else None


def _mean_curve(values: np.ndarray) -> list[float]:
    """The mean curve over the images whose rows are not NaN (all NaN: a NaN curve, not drawn)."""
    kept = values[~np.isnan(values).any(axis=1)]
    return (kept.mean(axis=0) if len(kept) else np.full(values.shape[1], math.nan)).tolist()


def _short(layer: str) -> str:
    """'features.conv3.0' → 'conv3'; 'head' → 'head'."""
    parts = [p for p in layer.split(".") if not p.isdigit() and p != "features"]
    return parts[-1] if parts else layer


# -- views: plain values in, a matplotlib figure or PNG bytes out --------------------------------------
@register_view
def draw_curves(rows: list[dict[str, Any]], epoch: int, images: int | str) -> Any:
    """One row per perturbation (black, blur, ROAD): the deletion-like curve left, the insertion-like one
    right, the references dashed and grey; each row's legend, with both scores (and each line's images when
    they differ), sits right of the row. A row with a ``note`` instead of curves (ROAD before the last
    epoch) is drawn empty, saying why."""
    from ..plotting import figure

    fig, grid = figure(len(rows), 2, panel=3.0)
    fig.set_size_inches(10.0, 3.0 * len(rows) + 0.6)
    for ax_row, row in zip(grid, rows, strict=True):
        if "note" in row:  # not computed at this epoch: an empty row that says why
            for ax, title in zip(ax_row, row["titles"], strict=True):
                ax.set_title(title, fontsize=9, color="0.4")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color("0.8")
                ax.text(0.5, 0.5, row["note"], transform=ax.transAxes, ha="center", va="center", color="0.4",
                        fontsize=8.5)
            continue
        varied = len({line.get("images") for line in row["lines"]}) > 1  # methods stopped on fewer images
        for ax, key, title, label in zip(ax_row, ("down", "up"), row["titles"], row["xlabels"], strict=True):
            for line in row["lines"]:
                reference = line["style"] != "-"
                ax.plot(row["x"], line[key], color=line["colour"], linestyle=line["style"],
                        linewidth=1.3 if reference else 1.6, marker="o" if len(row["x"]) < 10 else None, markersize=3,
                        label=_curve_label(line, images=varied))
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("p(true class)")
            better = "lower" if key == "down" else "higher"
            ax.set_title(f"{title}\n({better} is better)", fontsize=9)
            ax.grid(alpha=0.3)
        ax_row[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7.5, frameon=False,
                         title=f"{row['score']}: {'del.' if row['score'] == 'AUC' else 'MoRF'} / "
                               f"{'ins.' if row['score'] == 'AUC' else 'LeRF'}", title_fontsize=7.5)
    fig.suptitle(f"trust, epoch {epoch}: pixels ranked by each map, the edge map and random orders "
                 f"(mean of {images} images)", fontsize=10)
    return fig


def _curve_label(line: dict[str, Any], images: bool = False) -> str:
    """'saliency (0.267 / 0.483)'; with ``images``, 'saliency, 20 images (0.267 / 0.483)'."""
    count = f", {line['images']} images" if images and "images" in line else ""
    return f"{line['name']}{count} ({' / '.join(f'{s:.3f}' for s in line['scores'])})"




MEASURE_TITLES = {"spearman_abs_foreground": "ρ of |map|, foreground pixels (the verdict's)",
                  "spearman_abs": "ρ of |map|, all pixels",
                  "spearman_signed_foreground": "ρ of the signed map, foreground pixels",
                  "ssim": "SSIM of |map| scaled to [0, 1]"}


@register_view
def draw_randomization(layers: list[str], panels: dict[str, dict[str, list[float]]], colours: dict[str, str],
                       epoch: int, images: int | str, top: int | None = None, fewer: str | None = None) -> Any:
    """Four similarity measures between the trained map and the map after each cumulative re-initialization;
    the references (edges: ρ 1, random: ρ ≈ 0) dashed and grey, the legend below the panels; the ``top``
    steps (the verdict's "ρ top") shaded; ``fewer``: the images of the steps between those and the last."""
    from ..plotting import figure

    fig, axes = figure(2, 2, panel=1.0)
    fig.set_size_inches(max(8.0, 0.9 * len(layers) + 5.0), 7.2)
    steps = list(range(len(layers) + 1))
    for ax, (measure, title) in zip(axes.flat, MEASURE_TITLES.items(), strict=True):
        for name, values in panels.items():
            reference = name in REFERENCES
            ax.plot(steps, values[measure], color=colours[name], linestyle=STYLES.get(name, "-"),
                    marker=None if reference else "o", markersize=4, linewidth=1.2 if reference else 1.6,
                    label=name)
        if measure.startswith("spearman_abs_fore"):
            ax.axhline(CORRELATION_LIMIT, color="0.5", linestyle=":", linewidth=1)
            if top:
                ax.axvspan(0.5, top + 0.5, color="0.92", zorder=0)
                ax.text(top / 2 + 0.5, 1.02, "ρ top", ha="center", va="bottom", fontsize=7.5, color="0.35")
        ax.set_xticks(steps, ["trained", *[f"−{layer}" for layer in layers]], rotation=45, ha="right", fontsize=8)
        lowest = min((v for values in panels.values() for v in values[measure] if np.isfinite(v)), default=0.0)
        ax.set_ylim(max(-1.05, min(-0.3, lowest - 0.05)), 1.1)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("similarity to the trained map")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"model randomization, epoch {epoch}: layers re-initialized from the top, cumulatively\n"
                 f"(mean over {images} images{f', {fewer} between the shaded steps and the last' if fewer else ''}; "
                 f"a map still above {CORRELATION_LIMIT} on the foreground ignores the "
                 "weights)", fontsize=9.5)
    return fig


@register_view
def draw_cascade_maps(pixels: np.ndarray, methods: list[str],
                      maps: dict[str, tuple[np.ndarray, list[np.ndarray], list[float]]], layers: list[str], epoch: int,
                      images: int | str) -> bytes:
    """Per method: probe image 0, its trained |map| and the |map| after each cumulative re-initialization
    (``maps[method]``: trained, one per layer, the ρ of each), as one sheet (run by the drawing worker)."""
    from ..plotting import TileSheet, grey_rgb, unsigned_rgb

    tile = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    sheet = TileSheet(len(methods), len(layers) + 2, tile, zoom=max(1, 112 // max(tile)))
    for row, method in enumerate(methods):
        trained, after, correlations = maps[method]
        sheet.put(row, 0, grey_rgb(pixels), method.replace("_", "\n"))
        sheet.put(row, 1, unsigned_rgb(trained), "trained")
        for col, (layer, values, rho) in enumerate(zip(layers, after, correlations, strict=True), start=2):
            sheet.put(row, col, unsigned_rgb(values), f"−{layer}\nρ {rho:.2f}")
    return sheet.png(f"|map| of probe image 0 as layers are re-initialized from the top, epoch {epoch} (ρ: "
                     f"foreground |map|, mean over {images} images)")
