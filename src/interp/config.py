"""Typed configuration: YAML file → ``--set`` overrides → pydantic validation.

Every section forbids unknown keys, so a typo fails before any work starts, with a message that
names the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from .errors import UserError

__all__ = [
    "AnalysisConfig",
    "AnimateConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "validate_config",
    "bundled_config",
    "load_config",
    "save_config",
]

DATASETS = ("mnist-sample", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder", "rings", "polynomial")

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    # One of DATASETS, or "package.module:factory" for your own (see interp.data.custom).
    dataset: str = "mnist-sample"
    # Where the downloadable datasets are kept; for `folder`, the folder with train/<class>/ (and val/<class>/).
    root: str = "data"
    download: bool = True
    batch_size: PositiveInt = 128
    # Evaluation runs without gradients, so it can take far bigger batches than training.
    eval_batch_size: PositiveInt = 1000
    # Train on the first N training items only (quick experiments); None = all.
    train_limit: PositiveInt | None = None
    # Toy datasets: points per ring (rings, default 20,000) or training points (polynomial, 4,000).
    points: PositiveInt | None = None
    # rings: standard deviation of the Gaussian noise around each circle.
    noise: NonNegativeFloat = 0.005
    # folder: resize every image to this size (one number: square; or [height, width]); None = keep sizes
    # (then every image must have the same size).
    image_size: PositiveInt | list[PositiveInt] | None = None
    # folder without val/: this fraction of the images, drawn with the seed, is held out for evaluation.
    eval_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Keyword arguments for a "package.module:factory" dataset.
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS and ":" not in value:
            raise ValueError(f"expected one of {', '.join(DATASETS)}, or package.module:factory; got {value!r}")
        return value

    @field_validator("image_size")
    @classmethod
    def _two_sizes(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, list) and len(value) != 2:
            raise ValueError("expected one size or [height, width]")
        return value


class ModelConfig(_Section):
    # mlp, allconv, "torchvision:NAME" (e.g. torchvision:resnet18, random weights), or
    # "package.module:factory" for your own: called with the keywords it accepts among num_classes,
    # in_channels and input_shape, plus everything in `args`.
    arch: str = "mlp"
    args: dict[str, Any] = Field(default_factory=dict)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [128])
    activation: Literal["relu", "sigmoid", "tanh", "elu"] = "relu"
    # allconv: channels of the first block; the second block has twice as many (96 → 192 in All-CNN-C).
    width: PositiveInt = 96
    # allconv: batch norm after each conv. Not in the 2014 paper, but it makes Adam at 1e-3 train reliably.
    batchnorm: bool = True


class TrainConfig(_Section):
    epochs: NonNegativeInt = 5
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 0.001
    momentum: NonNegativeFloat = 0.9  # sgd only
    weight_decay: NonNegativeFloat = 0.0
    # auto = cuda, then mps, then cpu; or name one: cpu, cuda, cuda:1, mps.
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        kind = value.split(":", 1)[0]
        if kind not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value


class AnalysisConfig(_Section):
    # Run the stages at epoch 0, every `every` epochs, and at the last epoch.
    every: PositiveInt = 1
    # Probe batch: this many evaluation images per class, chosen once with the run's seed.
    probe_per_class: PositiveInt = 1
    # Each entry is a stage name, {name: {option: value}}, or "package.module:Class" for a stage of your
    # own; None = every stage that is on by default (`interp stages` lists them). The stages package
    # checks the entries (interp.stages.check_stages), right after the config is loaded.
    stages: list[str | dict[str, dict[str, Any] | None]] | None = None
    # The layer whose input is the penultimate representation (embeddings); None = the classifier,
    # i.e. the last Linear or 1×1 conv.
    features_layer: str | None = None


class AnimateConfig(_Section):
    # One animation panel per hidden-layer shape, trained side by side on the same data and seed.
    hidden: list[list[PositiveInt]] = Field(default_factory=lambda: [[1, 2], [2, 2], [3, 2], [4, 2]])
    frames: PositiveInt = 40
    # Training steps between frames; None = one epoch per frame.
    steps_per_frame: PositiveInt | None = None
    fps: PositiveInt = 8
    # gif is always written; mp4 adds a video next to it.
    format: Literal["gif", "mp4"] = "gif"
    # Points drawn per class in the hidden-space panel (training uses all of them).
    display_points: PositiveInt = 1500


class Config(_Section):
    name: str = Field("mnist-mlp", pattern=r"^[A-Za-z0-9._-]+$")  # run folder name prefix
    seed: int = 0
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    animate: AnimateConfig = Field(default_factory=AnimateConfig)


def bundled_config(name: str) -> Path:
    """Path of a config shipped with the package (``configs/<name>.yaml`` in a checkout)."""
    from importlib import resources

    return Path(str(resources.files("interp") / "configs" / f"{name}.yaml"))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw config dict; values are parsed as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=3")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({_first_line(exc)})") from None
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise UserError(f"--set {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (built-in defaults when ``path`` is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "default config"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise UserError(f"config file {source} not found")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise UserError(f"{source}: not valid YAML ({_first_line(exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{source}: expected a mapping of sections at the top, got {type(loaded).__name__}")
        raw = loaded
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " with --set"
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str) -> Config:
    """Validate a raw dict; a failure becomes one line naming ``source``, the key and the expectation."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = first["msg"].removeprefix("Value error, ")
            if "input" in first and not isinstance(first["input"], dict | list):
                message += f" (got {first['input']!r})"
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise UserError(f"{source}: {loc}: {message}{more}") from None


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (enough to rebuild the model later)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    path.write_text(text, encoding="utf-8")


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
