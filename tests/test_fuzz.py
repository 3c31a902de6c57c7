"""Random YAML configs and --set values through the real CLI: exit 0 or 2, one line, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from interp.cli import app

runner = CliRunner()


def sizes(small: int, cap: int, hostile: int) -> st.SearchStrategy:
    """A size: below 1, above the config's ``cap`` (up to ``hostile``), or a valid one up to ``small``. A
    valid but huge model (two hidden layers of 40,000 units: 600 million weights) is no user mistake, and
    no one can train and analyse it in the minute an example is given."""
    return st.one_of(st.integers(-2, 0), st.integers(1, small), st.integers(cap + 1, hostile))


KEYS = {
    "name": st.text(max_size=12), "seed": st.integers(-5, 2**64),
    "data": {"dataset": st.sampled_from(["mnist-sample", "mnist", "cifar10", "folder", "rings", "x:y", "", "../a:b"]),
             "batch_size": st.integers(-3, 10**8), "train_limit": st.integers(-1, 300), "points": sizes(5000, 5_000_000, 10**9),
             "image_size": st.one_of(st.integers(-1, 10**6), st.lists(st.integers(0, 99), max_size=3)),
             "eval_fraction": st.floats(allow_nan=True), "root": st.text(max_size=8)},
    # no valid torchvision architecture: like a huge model, a ResNet-18 is no user mistake, and its
    # randomization check (every one of its 21 layers, 100 images) takes far more than the minute given
    "model": {"arch": st.sampled_from(["mlp", "allconv", ":", "os:system", "math:sqrt", "torchvision:nope",
                                       "interp.models:MLP"]),
              "hidden": st.lists(sizes(256, 65_536, 10**7), max_size=3), "width": sizes(32, 4096, 10**6),
              "activation": st.sampled_from(["relu", "tanh", "swish", 3])},
    "train": {"epochs": st.integers(-1, 10**9), "lr": st.floats(allow_nan=True, allow_infinity=True),
              "optimizer": st.sampled_from(["adam", "sgd", "rmsprop"]),
              "device": st.sampled_from(["cpu", "cpu:7", "cuda:abc", "cuda:-1", "auto", "mps", "tpu"])},
    "analysis": {"every": st.integers(-1, 5), "probe_per_class": st.integers(-1, 10**6),
                 "stages": st.lists(st.one_of(st.sampled_from(["confusion", "nope", "a:b"]),
                                              st.fixed_dictionaries({"weights": st.fixed_dictionaries(
                                                  {"bins": st.integers(-1, 10**7)})})), max_size=2)},
}


def documents() -> st.SearchStrategy:
    """Mappings drawn from the real keys (with hostile values) and from junk keys and values."""
    sections = {key: (st.fixed_dictionaries({}, optional=value) if isinstance(value, dict) else value)
                for key, value in KEYS.items()}
    junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                        lambda children: st.one_of(st.lists(children, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), children, max_size=3)),
                        max_leaves=10)
    return st.one_of(st.fixed_dictionaries({}, optional=sections), junk)


def check(result) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.output


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents())
def test_random_yaml_documents(tmp_path: Path, document) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    started = time.perf_counter()
    # one cheap stage: a document naming a wide all-conv net would otherwise run the full trust check on the
    # CPU at epoch 0 (the last epoch of a 0-epoch run), minutes that say nothing about reading configs
    result = runner.invoke(app, ["train", "-c", str(path), "--save-dir", str(tmp_path / "save"),
                                 "--set", "train.epochs=0", "--set", "data.download=false",
                                 "--set", "analysis.stages=[confusion]"])
    check(result)
    assert time.perf_counter() - started < 60


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["train.lr", "model.hidden", "seed", "name", "data.points", "analysis.stages",
                            "model.arch", "x", "train", "a.b.c", "", "data..root"]),
       value=st.one_of(st.text(max_size=40), st.sampled_from(["[1, 2", "{a: }", "!!python/object:os.system", "1e999",
                                                               "-1", "[[[[]]]]", "~", "&a [*a]"])))
def test_random_set_values(tmp_path: Path, key: str, value: str) -> None:
    result = runner.invoke(app, ["train", "--save-dir", str(tmp_path / "save"), "--set", f"{key}={value}",
                                 "--set", "train.epochs=0", "--set", "analysis.stages=[]"])
    check(result)


@pytest.mark.parametrize("value", ["!!python/object/apply:os.system ['touch PWNED']"])
def test_yaml_tags_do_not_run_code(tmp_path: Path, value: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", f"name={value}", "--set", "train.epochs=0"])
    assert result.exit_code == 2 and not (tmp_path / "PWNED").exists()
