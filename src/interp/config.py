"""Typed configuration: YAML file → ``--set`` overrides → pydantic validation.

Every section forbids unknown keys, so a typo fails before any work starts, with a message that
names the file and the key.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
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

DATASETS = ("mnist-sample", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder", "rings", "polynomial",
            "patches")

MAX_SET_LENGTH = 10_000  # characters in one --set
MAX_CONFIG_BYTES = 1_000_000
MAX_DEPTH = 32  # levels of nesting a config may have
Units = Annotated[int, Field(ge=1, le=65_536)]
Size = Annotated[int, Field(ge=1, le=4096)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``epochs: true`` is a mistake, not 1: a yes/no value is refused where the field is not one."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in typing.get_args(annotation):
                raise ValueError("expected a value of its own kind, not yes/no (true/false)")
        return value


class DataConfig(_Section):
    @field_validator("root")
    @classmethod
    def _home(cls, value: str) -> str:
        return os.path.expanduser(value)


    # One of DATASETS, or "package.module:factory" for your own (see interp.data.custom).
    dataset: str = "mnist-sample"
    # Where the downloadable datasets are kept; for `folder`, the folder with train/<class>/ (and val/<class>/).
    root: str = "data"  # a leading ~ is your home folder
    download: bool = True
    batch_size: int = Field(default=128, ge=1, le=1_000_000)
    # Evaluation runs without gradients, so it can take far bigger batches than training.
    eval_batch_size: int = Field(default=1000, ge=1, le=1_000_000)
    # Train on the first N training items only (quick experiments); None = all.
    train_limit: PositiveInt | None = None
    # Shift this fraction of the training labels to another class (drawn with the seed), to see whether the
    # dataset map finds them: interp.data.flip_labels(labels, fraction, classes, seed) names the ones shifted.
    label_noise: float = Field(default=0.0, ge=0, lt=1)
    # Toy datasets: points per ring (rings, default 20,000) or training points (polynomial, 4,000).
    points: int | None = Field(default=None, ge=1, le=5_000_000)
    # rings: standard deviation of the Gaussian noise around each circle.
    noise: float = Field(default=0.005, ge=0, le=100)
    # folder: resize every image to this size (one number: square; or [height, width]); None = keep sizes
    # (then every image must have the same size).
    image_size: Size | list[Size] | None = None
    # folder without val/: this fraction of the images, drawn with the seed, is held out for evaluation.
    eval_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Keyword arguments for a "package.module:factory" dataset.
    args: dict[str, Any] = Field(default_factory=dict)
    # Per-batch augmentation of the training images, on the device: crop_flip = a random crop after
    # padding by 4 pixels and a random horizontal flip (the usual CIFAR-10 recipe).
    augment: Literal["none", "crop_flip"] = "none"

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS and ":" not in value:
            raise ValueError(f"expected one of {', '.join(DATASETS)}, or package.module:factory")
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
    hidden: list[Units] = Field(default_factory=lambda: [128], max_length=64)
    activation: Literal["relu", "sigmoid", "tanh", "elu"] = "relu"
    # allconv: channels of the first block; the second block has twice as many (96 → 192 in All-CNN-C).
    width: int = Field(default=96, ge=1, le=4096)
    # allconv: batch norm after each conv. Not in the 2014 paper, but it makes Adam at 1e-3 train reliably.
    batchnorm: bool = True


class TrainConfig(_Section):
    epochs: int = Field(default=5, ge=0, le=1_000_000)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=0.001, gt=0, le=1e6)
    momentum: float = Field(default=0.9, ge=0, le=1)  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = Field(default=0.0, ge=0, le=1e6)
    # The learning rate per step: constant (train.lr throughout), or cosine — a linear warm-up over
    # warmup_epochs, then half a cosine from train.lr down to 0 at the last step of train.epochs.
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0, le=1_000_000)
    # auto = cuda, then mps, then cpu; or name one: cpu, cuda, cuda:1, mps.
    device: str = "auto"
    # What a NaN or infinite training loss does: stop (exit code 3, checkpoints keep the last good epoch;
    # the losses are read every 50 steps, so no step waits for the device) or skip_batch (that batch's step
    # is left out and counted in metrics.jsonl as skipped_batches; every step's loss is read before its step).
    on_nan: Literal["stop", "skip_batch"] = "stop"
    # Mixed precision (autocast) for the training forward pass: bf16 works on CPUs and recent GPUs, fp16 on
    # CUDA only (with a gradient scaler). Evaluation and the stages run in fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # channels_last memory format for conv nets: auto = on CUDA only; true or false to choose.
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile the training model (measured before you rely on it: it pays off on long GPU runs).
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,2})?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainConfig:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer: sgd and a momentum above 0")
        return self


class AnalysisConfig(_Section):
    # Run the stages at epoch 0, every `every` epochs, and at the last epoch.
    every: int = Field(default=1, ge=1, le=1_000_000)
    # Probe batch: this many evaluation images per class, chosen once with the run's seed.
    probe_per_class: int = Field(default=1, ge=1, le=100)
    # Each entry is a stage name, {name: {option: value}}, or "package.module:Class" for a stage of your
    # own; None = every stage that is on by default (`interp stages` lists them). The stages package
    # checks the entries (interp.stages.check_stages), right after the config is loaded.
    stages: list[str | dict[str, dict[str, Any] | None]] | None = None
    # The attribution methods drawn side by side (the attributions stage) and scored (the trust stage):
    # names from interp.attribution.METHODS, or "package.module:Class" for a method of your own; None = the default
    # set (interp.attribution.DEFAULT_METHODS). Checked right after the config is loaded.
    methods: list[str] | None = None
    # The layer whose input is the penultimate representation (embeddings); None = the classifier,
    # i.e. the last Linear or 1×1 conv.
    features_layer: str | None = None
    # Keep the model's weights after every epoch (checkpoints/epoch_NNN.pt, the model's size each): the
    # influence stage's full-gradient variant needs them, and its fast variant then takes each epoch's own
    # features. Without them every run still keeps each epoch's classifier (training/epoch_NNN.npz).
    snapshots: bool = False
    # A stage that fails is reported (traceback in errors.log) and training goes on; true: stop instead
    # (for CI and debugging).
    strict: bool = False
    # Render figures in a separate process while training goes on (the run waits for it at the end);
    # false: draw each figure on the training path, in order.
    drawing_worker: bool = True


class AnimateConfig(_Section):
    # One animation panel per hidden-layer shape, trained side by side on the same data and seed.
    hidden: list[Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(max_length=16)]] = Field(
        default_factory=lambda: [[1, 2], [2, 2], [3, 2], [4, 2]], max_length=16)
    frames: int = Field(default=40, ge=1, le=2000)
    # Training steps between frames; None = one epoch per frame.
    steps_per_frame: int | None = Field(default=None, ge=1, le=1_000_000)
    fps: int = Field(default=8, ge=1, le=60)
    # gif is always written; mp4 adds a video next to it.
    format: Literal["gif", "mp4"] = "gif"
    # Points drawn per class in the hidden-space panel (training uses all of them).
    display_points: int = Field(default=1500, ge=1, le=20_000)


class Config(_Section):
    # Run folder name prefix; None: the dataset and the architecture (mnist-mlp, cifar10-allconv,
    # rings-mlp …; see run_name).
    # A plain folder name: letters, digits, '.', '_' and '-', not starting with '.' (no ".", "..", hidden).
    name: str | None = Field(None, max_length=100)
    seed: int = Field(default=0, ge=0, lt=2**63)
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    animate: AnimateConfig = Field(default_factory=AnimateConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", value):
            raise ValueError("a run folder name: letters, digits, '.', '_' and '-', not starting with '.'")
        return value


def _short(value: str) -> str:
    """'torchvision:resnet18' → 'resnet18', 'pkg.data:make' → 'make', 'mnist-sample' → 'mnist'."""
    value = value.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if ":" in value else value
    return {"mnist-sample": "mnist"}.get(value, value)


def run_name(cfg: Config) -> str:
    """The run folder's name: ``name`` when the config gives one, else ``<dataset>-<architecture>``."""
    if cfg.name:
        return cfg.name
    dataset = Path(cfg.data.root).name if cfg.data.dataset == "folder" else _short(cfg.data.dataset)
    name = f"{dataset}-{_short(cfg.model.arch)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:100] or "run"


def bundled_config(name: str) -> Path:
    """Path of a config shipped with the package (``configs/<name>.yaml`` in a checkout)."""
    from importlib import resources

    return Path(str(resources.files("interp") / "configs" / f"{name}.yaml"))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw config dict; values are parsed as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        shown = item if len(item) <= 80 else item[:77] + "…"
        if not sep or not key:
            raise UserError(f"--set {shown!r}: expected key.path=value, e.g. --set train.epochs=3")
        if len(item) > MAX_SET_LENGTH:
            raise UserError(f"--set {key}=…: {len(item):,} characters; at most {MAX_SET_LENGTH:,} (put long values "
                            "in a config file)")
        value = _parse_yaml(text, f"--set {shown!r}: the value") if text.strip() else ""
        item = shown
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
            what = ("is a folder, not a config file" if file.is_dir() else
                    "is not a regular file (a pipe or a device); give a YAML file" if file.exists() else "not found")
            raise UserError(f"config file {source} {what}")
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise UserError(f"config file {source} cannot be read ({exc.strerror or exc})") from None
        if len(data) > MAX_CONFIG_BYTES:
            raise UserError(f"{source}: {len(data):,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{source}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
        loaded = _parse_yaml(text, source)
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
        # a key with control characters (a record separator breaks the line) is quoted, so the error stays one line
        loc = ".".join(str(part) if str(part).isprintable() else repr(str(part)) for part in first["loc"]) \
            or "(top level)"
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = first["msg"].removeprefix("Value error, ")
            if "input" in first and not isinstance(first["input"], dict | list):
                got = repr(first["input"])
                message += f" (got {got if len(got) <= 60 else got[:57] + '…'})"
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise UserError(f"{source}: {loc}: {message}{more}") from None


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (enough to rebuild the model later)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    path.write_text(text, encoding="utf-8")


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


class _RepeatedKey(yaml.YAMLError):
    pass


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is refused (YAML would keep the last
    silently, so an edit that seems to change a value may change nothing)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, typing.Hashable):
                continue  # refused by the safe loader itself
            if key in seen:
                raise _RepeatedKey(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                   "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with its failures (bad syntax, nesting too deep) as one UserError line."""
    try:
        if "*" in text and any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise UserError(f"{source}: YAML aliases (*name) are not accepted in a config; write the values out")
        value = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 — a SafeLoader that refuses repeated keys
    except _RepeatedKey as exc:
        raise UserError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({_first_line(exc)})") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a config") from None
    if _depth(value) > MAX_DEPTH:
        raise UserError(f"{source}: nested more than {MAX_DEPTH} levels deep; that is not a config")
    return value


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest (without recursion: a hostile document cannot blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
