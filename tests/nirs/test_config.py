import json

import pytest
import yaml
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from nirs.config import ConfigError, build, count_pipelines, expand, load_config, validate
from nirs.generators import range_values
from nirs.operators import SNV, SavitzkyGolay
from nirs.splitters import KennardStone

GRID = [
    {"_or_": ["SNV", "MSC", {"class": "SavitzkyGolay", "params": {"window_length": 11, "deriv": 1}}]},
    "StandardScaler",
    {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [2, 10, 2]}}}},
]


def test_generator_config_expands_to_the_announced_count():
    assert count_pipelines(GRID) == 3 * 5
    pipelines = expand(GRID)
    assert len(pipelines) == 15
    assert pipelines[0].name == "0001_SNV-StandardScaler-PLSRegression(n_components=2)"
    assert pipelines[14].name == "0015_SavitzkyGolay(window_length=11, deriv=1)-StandardScaler-PLSRegression(n_components=10)"
    assert len({p.name for p in pipelines}) == 15
    assert pipelines[6].choices == [
        {"path": "pipeline[0]", "keyword": "_or_", "index": 1, "value": "MSC"},
        {"path": "pipeline[2].model.params.n_components", "keyword": "_range_", "index": 1, "value": 4},
    ]
    json.dumps([p.config for p in pipelines])  # JSON-safe


@pytest.mark.parametrize(
    "config",
    [
        GRID,
        [{"_or_": [None, "SNV", ["SNV", "Detrend"], {"_or_": ["MSC", {"class": "Normalize", "params": {"norm": {"_or_": ["l2", "max"]}}}]}]},
         {"model": {"_or_": [{"class": "PLSRegression", "params": {"n_components": {"_range_": [1, 3]}}}, "Ridge"]}}],
        {"_or_": [["SNV", "PLSRegression"], ["MSC", {"_or_": ["Ridge", "Lasso"]}]]},
        {"pipeline": [{"class": "SavitzkyGolay", "params": {"window_length": {"_range_": [5, 15, 2]}, "polyorder": {"_or_": [1, 2]}}}, "PLSRegression"]},
    ],
)
def test_count_matches_expansion(config):
    assert count_pipelines(config) == len(expand(config))


def test_range_includes_its_stop_like_nirs4all():
    assert range_values([2, 10, 4], "x") == [2, 6, 10]
    assert range_values([1, 5], "x") == [1, 2, 3, 4, 5]
    assert range_values({"from": 10, "to": 50, "step": 10}, "x") == [10, 20, 30, 40, 50]
    assert range_values([0.1, 0.3, 0.1], "x") == [0.1, 0.2, 0.3]
    assert range_values([10, 1, -3], "x") == [10, 7, 4, 1]
    with pytest.raises(ConfigError, match="gives no values"):
        range_values([5, 1, 1], "x")


def test_limit_error_names_count_and_limit():
    big = [{"_or_": ["SNV", "MSC", "Detrend"]}, {"class": "PLSRegression", "params": {"n_components": {"_range_": [1, 400]}}}]
    assert count_pipelines(big) == 1200
    with pytest.raises(ConfigError, match="generates 1200 pipelines, above the limit of 1000"):
        expand(big)
    with pytest.raises(ConfigError, match="generates 1200 pipelines, above the limit of 50"):
        validate(big, max_pipelines=50)
    huge = [{"class": "PLSRegression", "params": {"n_components": {"_range_": [1, 10**6]}}}, {"_or_": list("ab" * 50)}]
    assert count_pipelines(huge) == 10**8  # counted, never expanded


@pytest.mark.parametrize(
    "config, message",
    [
        (["SNV", "SNVV", "PLSRegression"], r"step 2: unknown class 'SNVV' \(did you mean 'SNV'\?\)"),
        ([{"_or_": ["SNV", "mylab.Nope"]}, "Ridge"], r"step 1, _or_ alternative 2: unknown class 'mylab.Nope'"),
        (["SNV", {"class": "PLSRegression", "params": {"n_component": 5}}],
         r"step 2: PLSRegression has no parameter 'n_component' \(did you mean 'n_components'\?\)"),
        ([{"class": "SNV", "params": {"window": 3}}, "Ridge"], r"step 1: SNV has no parameter 'window'"),
        (["SNV", {"model": {"class": "PLSRegression", "params": {"n_components": "eight"}}}],
         r"step 2.*'n_components' parameter of PLSRegression must be an int"),
        (["SNV", {"class": "Normalize", "params": {"norm": "l7"}}, "Ridge"], r"step 2.*'norm' parameter of Normalize"),
        (["SNV", "StandardScaler"], r"no model step \(steps found: SNV, StandardScaler\)"),
        (["SNV", "PLSRegression", "Ridge"], r"2 model steps \(step 2 \(PLSRegression\) and step 3 \(Ridge\)\)"),
        (["PLSRegression", "SNV"], r"step 2 \(SNV\) comes after the model"),
        (["KFold", {"split": "ShuffleSplit"}, "Ridge"], r"2 split steps"),
        ([{"model": "StandardScaler"}], r"StandardScaler cannot be a model: it has no predict method"),
        ([{"class": "SNV", "window": 3}, "Ridge"], r"unexpected keys \['window'\] beside 'class'; parameters go under 'params'"),
        ([{"klass": "SNV"}, "Ridge"], r"step 1: a step dict needs a 'class'"),
        ([{"_or_": []}, "Ridge"], r"_or_ needs a non-empty list"),
        ([{"_range_": [1, 3]}, "Ridge"], r"a _range_ gives numbers; it cannot stand for a step"),
        ({"steps": ["SNV"]}, r"needs a 'pipeline' list"),
        ([{"split": {"class": "KFold", "params": {"n_splits": 1}}}, "Ridge"], r"KFold\(n_splits=1\) failed"),
    ],
)
def test_bad_configs_are_named_before_fitting(config, message):
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_python_objects_names_and_default_split():
    (p,) = expand([SNV(), StandardScaler(), PLSRegression(8)])
    assert p.name == "0001_SNV-StandardScaler-PLSRegression(n_components=8)"
    assert p.config[-1] == {"split": {"class": "sklearn.model_selection.KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}}
    built = build(p)
    assert [k for k, _ in built.steps] == ["transformer", "transformer", "model"]
    assert isinstance(built.splitter, KFold) and built.splitter.shuffle and built.splitter.random_state == 0
    # the JSON config expands back to the same pipeline
    (again,) = expand(json.loads(json.dumps(p.config)))
    assert again.name == p.name and again.config == p.config
    # fresh objects on every build: folds never share state
    assert build(p).steps[2][1] is not built.steps[2][1]


def test_roles_splitters_and_target_scaling():
    (p,) = expand([SavitzkyGolay(15, 2, deriv=1), {"y_processing": "MinMaxScaler"}, {"split": KennardStone(test_size=0.2)}, {"model": "PLSRegression"}])
    assert p.name == "0001_SavitzkyGolay(window_length=15, deriv=1)-Y(MinMaxScaler)-PLSRegression"
    built = build(p)
    assert [k for k, _ in built.steps] == ["transformer", "y_transformer", "model"]
    assert isinstance(built.splitter, KennardStone) and built.splitter.test_size == 0.2


def test_load_json_and_yaml(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"pipeline": GRID, "name": "grid"}))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(GRID))
    assert count_pipelines(load_config(tmp_path / "p.json")) == 15
    assert [p.name for p in expand(load_config(tmp_path / "p.yaml"))] == [p.name for p in expand(GRID)]
    (tmp_path / "bad.json").write_text('[\n  "SNV",\n  {"model": "Ridge",}\n]')
    with pytest.raises(ConfigError, match=r"bad.json: line 3, column .*: invalid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("- SNV\n- {model: [Ridge\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_config(tmp_path / "bad.yaml")
