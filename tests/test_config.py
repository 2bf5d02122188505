import dataclasses
import json

import pytest

from schemas import validate
from stage1.config import Config, ConfigError, from_dict, override, to_dict
from stage1.presets import load_preset


def test_defaults_validate_and_roundtrip():
    cfg = Config().validate()
    d = to_dict(cfg)
    validate(d, "config")
    assert from_dict(json.loads(json.dumps(d))) == cfg


def test_override_types_are_checked():
    cfg = override(
        Config(),
        [
            "optim.lr=3e-4",
            "optim.epochs=7",
            "backbone.variants=cls,cls_last4",
            "data.fractions=0.5,0.2,0.2,0.1",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.epochs == 7
    assert cfg.backbone.variants == ("cls", "cls_last4")
    assert cfg.data.fractions == (0.5, 0.2, 0.2, 0.1)
    with pytest.raises(ConfigError, match="expects int"):
        override(Config(), ["optim.epochs=seven"])
    with pytest.raises(ConfigError, match="unknown config key"):
        override(Config(), ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="is a section"):
        override(Config(), ["optim=1"])
    with pytest.raises(ConfigError, match="needs 4"):
        override(Config(), ["data.fractions=0.5,0.5"])
    with pytest.raises(ConfigError, match="form"):
        override(Config(), ["optim.lr"])


@pytest.mark.parametrize(
    "bad",
    [
        "risk.alpha=0",
        "risk.alpha=1.5",
        "risk.method=magic",
        "data.fractions=0.5,0.5,0.5,0.5",
        "backbone.image_size=230",
        "optim.ema_decay=1.0",
        "head.kind=transformer",
    ],
)
def test_validate_rejects(bad):
    with pytest.raises(ConfigError):
        override(Config(), [bad]).validate()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().optim.lr = 1.0  # type: ignore[misc]


def test_presets(tmp_path):
    assert load_preset("1") == load_preset("phase1")
    assert load_preset("phase1").head.hidden == 768
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("phase99x")
    with pytest.raises(ConfigError, match="unknown phase"):
        load_preset("99")
    f = tmp_path / "best.json"
    f.write_text(
        json.dumps({"preset": "phase1", "optim": {"lr": 0.005}, "head": {"kind": "linear"}})
    )
    cfg = load_preset(str(f))
    assert cfg.optim.lr == 0.005 and cfg.head.kind == "linear" and cfg.optim.epochs == 40
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_preset(str(bad))
