import re
from pathlib import Path

import pytest
import yaml

from salis.errors import ParamsError
from salis.params import parse_model_params, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_load_with_five_cycles():
    params = load_params(ROOT / "params.yaml")
    assert params.num_cycles == 5
    assert params.cycles["c3"].next == 4 and params.cycles["c3"].prev == 2
    assert params.model.anchor_sizes == (8, 16, 32, 64, 128)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ParamsError, match=r"train\.lr must be a number, got 'fast' \(str\)"):
        parse_params({"train": {"lr": "fast"}})


def test_bool_is_not_an_integer():
    with pytest.raises(ParamsError, match=r"select\.budget must be an integer"):
        parse_params({"select": {"budget": True}})


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ParamsError, match=r"unknown key\(s\) train\.lrate; valid keys here: .*lr,"):
        parse_params({"train": {"lrate": 0.1}})


def test_choice_out_of_set():
    with pytest.raises(ParamsError, match=r"model\.backbone must be one of 'resnet18'"):
        parse_params({"model": {"backbone": "vgg"}})


def test_range_checks():
    with pytest.raises(ParamsError, match=r"select\.budget must be positive, got 0"):
        parse_params({"select": {"budget": 0}})
    with pytest.raises(ParamsError, match=r"pseudo\.score_thresh must lie in \[0, 1\]"):
        parse_params({"pseudo": {"score_thresh": 1.5}})


def test_cycle_chain_must_be_consistent():
    with pytest.raises(ParamsError, match=r"prev = k - 1 and next = k \+ 1"):
        parse_params({"cycles": {"c1": {"k": 1, "prev": 0, "next": 3}}})
    with pytest.raises(ParamsError, match=r"without gaps"):
        parse_params({"cycles": {"c2": {"k": 2, "prev": 1, "next": 3}}})


def test_ints_become_floats_and_lists_tuples():
    params = parse_params({"train": {"lr": 1, "lr_steps": [0.5]}})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.lr_steps == (0.5,)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ParamsError, match="no such file"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({}))
    assert load_params(path) == Params()


def test_acquisition_params_defaults_and_ranges():
    params = load_params(ROOT / "params.yaml")
    assert params.score.mc_passes == 0 and params.score.mc_dropout_p == 0.5 and params.model.train_dropout_p == 0.0
    assert params.model.learning_loss is False and params.select.aggregation == "default"
    assert params.train.learning_loss_stop_grad_after == 0.0  # measured: 0.6 costs the detector itself (README)
    with pytest.raises(ParamsError, match=r"score\.mc_passes must be >= 0"):
        parse_params({"score": {"mc_passes": -1}})
    with pytest.raises(ParamsError, match=r"score\.mc_dropout_p must lie in \[0, 1\)"):
        parse_params({"score": {"mc_dropout_p": 1.0}})
    with pytest.raises(ParamsError, match=r"train\.learning_loss_stop_grad_after must lie in \[0, 1\]"):
        parse_params({"train": {"learning_loss_stop_grad_after": 1.5}})
    assert params.train.box_pairwise_warmup == 0.5  # measured: without it no mask from boxes alone (docs/annotators.md)
    with pytest.raises(ParamsError, match=r"train\.box_pairwise_warmup must lie in \[0, 1\]"):
        parse_params({"train": {"box_pairwise_warmup": -0.1}})
    with pytest.raises(ParamsError, match=r"model\.learning_loss_weight must be >= 0"):
        parse_params({"model": {"learning_loss_weight": -0.1}})
    with pytest.raises(ParamsError, match=r"model\.learning_loss must be true or false"):
        parse_params({"model": {"learning_loss": "yes"}})


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key != "cycles":
            out |= _keys(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_example_params_are_valid_and_name_every_key_dvc_yaml_may_ask_for():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    example_path = ROOT / "examples" / "dsb2018" / "params.yaml"
    example = yaml.safe_load(example_path.read_text())
    load_params(example_path)
    # dvc.yaml lists params by key: a key missing from a params file stops `dvc repro`
    assert _keys(example) == _keys(shipped)


@pytest.mark.parametrize(
    "old, new",
    [
        ({"train": {"device": "cpu"}}, "runtime.device"),
        ({"train": {"amp": False}}, "runtime.amp"),
        ({"model": {"mc_dropout_p": 0.3}}, "score.mc_dropout_p"),
        ({"model": {"mc_dropout_train": True}}, "model.train_dropout_p"),
    ],
)
def test_an_old_params_file_is_told_where_a_moved_key_lives(old, new):
    with pytest.raises(ParamsError, match=rf"has moved: use {re.escape(new)}"):
        parse_params(old)


def test_old_checkpoint_model_params_still_load():
    """Checkpoints written before the move store mc_dropout_p / mc_dropout_train."""
    model = parse_model_params({"mc_dropout_p": 0.3, "mc_dropout_train": True}, "old.pt")
    assert model.train_dropout_p == 0.3
    assert parse_model_params({"mc_dropout_p": 0.3, "mc_dropout_train": False}, "old.pt").train_dropout_p == 0.0


def test_runtime_threads_must_not_be_negative():
    with pytest.raises(ParamsError, match=r"runtime\.threads must be >= 0"):
        parse_params({"runtime": {"threads": -1}})



@pytest.mark.parametrize(
    "override, old, new",
    [
        ("sampler=entropy", "sampler: random             #", "sampler: entropy            #"),
        ("model.weights=backbone.pt", "  weights:\n", "  weights: backbone.pt\n"),
        ("data.coco.test_instances=t.json", "    test_instances:\n", "    test_instances: t.json\n"),
        ("train.lr_steps=[0.5,0.8]", "  lr_steps:\n  - 0.75\n  - 0.9\n", "  lr_steps:\n  - 0.5\n  - 0.8\n"),
        ("select.tsp_components=[class,mask]", "  - class\n  - box\n  - mask\n", "  - class\n  - mask\n"),
        ("model.anchor_sizes=[4,8,16,32,64]", "  - 8\n  - 16\n  - 32\n  - 64\n  - 128\n", "  - 4\n  - 8\n  - 16\n  - 32\n  - 64\n"),
    ],
)
@pytest.mark.parametrize("params_file", ["params.yaml", "examples/dsb2018/params.yaml"])
def test_dvc_exp_run_set_changes_only_the_value_it_sets(tmp_path, params_file, override, old, new):
    """`dvc exp run -S` rewrites params.yaml through dvc.utils.hydra.apply_overrides: params.yaml
    is shaped (block lists, empty for none, comments on lines of their own) so that nothing else
    moves: no comment lost or displaced, no list re-flowed, no null rewritten."""
    from dvc.utils.hydra import apply_overrides

    original = (ROOT / params_file).read_text()
    assert original.count(old) == 1
    path = tmp_path / "params.yaml"
    path.write_text(original)
    apply_overrides(str(path), [override])
    assert path.read_text() == original.replace(old, new)
    load_params(path)  # and it still validates
