"""``optim.pos_weight``: > 0 is the positive-class weight, -1 is "automatic" (the family's rule),
and 0 (or any other value) is refused — by the config, the schema, the sweep grid, the heads'
``resolve_pos_weight`` and the CLI alike (issue 14, item 5: the run and ``resolve_pos_weight``
used to disagree on what 0 meant)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from heads import families, losses
from schemas import validate
from stage1.cli import main
from stage1.config import ConfigError, to_dict
from stage1.presets import load_preset
from stage1.run import specs
from stage1.sweep.grid import expand_grid, parse_grid

Y = np.array([0, 0, 0, 1, 0, 1, 0, 0])  # n_neg / n_pos = 3


def _with(preset: str, pos_weight: float):
    cfg = load_preset(preset)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, pos_weight=pos_weight))


@pytest.mark.parametrize("bad", [0.0, -0.5, -2.0])
def test_zero_and_other_non_positive_weights_are_refused_everywhere(bad):
    with pytest.raises(ValueError, match="pos_weight must be > 0 or -1"):
        losses.resolve_pos_weight(bad, Y)
    for kind, fam in families.FAMILIES.items():
        cfg = _with("phase2" if kind == "selective" else "phase1", bad)
        with pytest.raises(ValueError, match="pos_weight must be > 0 or -1"):
            fam.resolve_pos_weight(specs.head_spec(cfg), bad, Y)
        with pytest.raises(ConfigError, match="optim.pos_weight must be > 0 or -1"):
            cfg.validate()
    with pytest.raises(Exception, match="pos_weight"):
        validate(to_dict(_with("phase1", bad)), "config")


def test_a_sweep_grid_over_zero_weight_is_refused():
    base = load_preset("phase1")
    with pytest.raises(ValueError, match="grid pos_weight=0.0: optim.pos_weight must be > 0 or -1"):
        expand_grid(base, parse_grid(["pos_weight=0,1"], base))
    assert [c.optim.pos_weight for c in expand_grid(base, parse_grid(["pos_weight=-1,2"]))] == [
        -1.0,
        2.0,
    ]


def test_cli_set_zero_weight_is_a_one_line_error(tmp_path, capsys):
    rc = main(["train", "--cache", str(tmp_path / "c.h5"), "--out", str(tmp_path / "r")]
              + ["--set", "optim.pos_weight=0"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.pos_weight must be > 0 or -1" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("preset", "set_risk_loss", "pos_weight", "want"),
    [
        ("phase1", None, -1.0, 3.0),  # classifier heads: automatic = n_neg / n_pos
        ("phase1", None, 2.5, 2.5),
        ("phase2", "lagrangian", -1.0, 1.0),  # the constraint, not a weight, handles FNR
        ("phase2", "weighted", -1.0, 3.0),
        ("phase2", "lagrangian", 0.7, 0.7),  # an explicit weight always wins
    ],
)
def test_the_run_and_the_family_resolve_the_same_weight(preset, set_risk_loss, pos_weight, want):
    cfg = _with(preset, pos_weight)
    if set_risk_loss:
        cfg = dataclasses.replace(
            cfg, selective=dataclasses.replace(cfg.selective, risk_loss=set_risk_loss)
        )
    cfg = cfg.validate()
    fam = families.get(cfg.head.kind)
    got = specs.resolve_pos_weight(cfg, Y)  # what stage1.run trains with
    assert got == pytest.approx(want)
    assert fam.resolve_pos_weight(specs.head_spec(cfg), pos_weight, Y) == got
    assert float(specs.hparams(cfg, got).pos_weight) == pytest.approx(want)
    validate(to_dict(cfg), "config")
