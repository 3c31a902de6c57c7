from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from interp.config import Config, apply_overrides, load_config, run_name, save_config, validate_config
from interp.errors import UserError
from interp.stages import check_stages

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_default_yaml_is_the_built_in_default() -> None:
    assert load_config(Path(__file__).parent.parent / "configs" / "default.yaml") == Config()
    assert load_config(None) == Config()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert re.fullmatch(r"[a-z0-9]+-[a-z0-9]+|rings|polynomial", run_name(cfg))  # dataset-arch unless named
    assert cfg.data.dataset in ("mnist-sample", "mnist", "cifar10", "rings", "polynomial")


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(None, ["model.hidden=[256,64]", "data.download=false", "train.lr=0.01",
                             "train.epochs=3", "name=foo"])
    assert cfg.model.hidden == [256, 64]
    assert cfg.data.download is False
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.train.epochs == 3
    assert cfg.name == "foo"


def test_override_creates_nested_keys_and_rejects_bad_shapes() -> None:
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    with pytest.raises(UserError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(UserError, match="train.epochs is a value"):
        apply_overrides({"train": {"epochs": 2}}, ["train.epochs.x=1"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  hiden: [3]\n", r"bad.yaml: model.hiden: unknown key"),
        ("train:\n  epochs: many\n", r"bad.yaml: train.epochs: Input should be a valid integer.*'many'"),
        ("data:\n  dataset: imagenet\n", r"bad.yaml: data.dataset: expected one of mnist-sample, mnist, fashion-mnist"),
        ("train:\n  device: tpu\n", r"bad.yaml: train.device: expected auto, cpu, cuda, cuda:N or mps"),
        ("analysis:\n  stages: [confusion, saliencyy]\n", r"bad.yaml: analysis.stages: entry 1: unknown stage 'saliencyy'"),
        ("analysis:\n  stages: [{confusion: {bins: 3}}]\n", r"entry 0 \(confusion\): bins: unknown option"),
        ("model: [1, 2\n", r"bad.yaml: not valid YAML"),
        ("- 1\n- 2\n", r"bad.yaml: expected a mapping"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        cfg = load_config(path)  # the config's own checks …
        check_stages(cfg.analysis.stages, f"{path}: analysis.stages")  # … then the stages package's, as the CLI does


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_errors_mention_set() -> None:
    with pytest.raises(UserError, match=r"default config with --set: model.activation"):
        load_config(None, ["model.activation=swish"])


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.hidden=[32,16]", "analysis.stages=[confusion]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == [32, 16]


def test_loading_a_config_and_checking_its_stages_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from interp.config import load_config; from interp.stages import check_stages; "
            "cfg = load_config('configs/default.yaml', ['analysis.stages=[confusion, {trust: {steps: 5}}]']); "
            "check_stages(cfg.analysis.stages); check_stages(None); "
            "print(sorted(m for m in ('torch', 'captum', 'sklearn', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent).stdout
    assert out.strip() == "[]"


def test_default_stages_come_from_the_registry() -> None:
    from interp.stages import STAGES, build_stages, default_stage_specs

    assert Config().analysis.stages is None
    names = [stage.name for stage in build_stages(None)]
    built_in = [n for n, cls in STAGES.items() if cls.default and cls.__module__.startswith("interp.stages.")]
    assert names == default_stage_specs() == built_in  # a test's own stage registered earlier is not a default
    assert names[0] == "confusion" and names[-1] == "trust"
    assert "neuron_video" not in names and "activation_gif" not in names


def test_a_key_with_control_characters_is_named_on_one_line() -> None:
    """A record separator (U+001E) is a line break to str.splitlines: the key is quoted instead."""
    for raw, said in (({"\x1e": None}, "fuzz.yaml: '\\x1e': unknown key"),
                      ({"model": {"arch\x0b": "mlp"}}, "fuzz.yaml: model.'arch\\x0b': unknown key")):
        with pytest.raises(UserError) as caught:
            validate_config(raw, "fuzz.yaml")
        assert str(caught.value) == said
