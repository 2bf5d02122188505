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
        "finetune.epochs=-1",
        "finetune.targets=qkv,attn",
        "finetune.blocks=[0-",
        "finetune.fsam_lambda=1.0",
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


# ---------------------------------------------------------------------------------------------
# Config rules live once: the JSON schema and the heads' hyperparameters are checked against the
# dataclasses, so neither can drift from them.

_JSON_TYPES = {int: {"integer"}, float: {"number"}, str: {"string"}, bool: {"boolean"}}


def _schema_types(prop: dict) -> set[str]:
    if "enum" in prop:
        return {type(v).__name__.replace("str", "string") for v in prop["enum"]}
    t = prop.get("type")
    return set(t) if isinstance(t, list) else {t}


def test_config_schema_matches_the_dataclasses_field_for_field():
    import typing

    from schemas import load_schema

    schema = load_schema("config")
    hints = typing.get_type_hints(Config)
    assert set(schema["properties"]) == set(hints)
    for section, tp in hints.items():
        prop = schema["properties"][section]
        if not dataclasses.is_dataclass(tp):
            assert _schema_types(prop) == {"string"}
            continue
        fields = typing.get_type_hints(tp)
        assert set(prop["properties"]) == set(fields), section
        assert prop.get("additionalProperties") is False, section
        for name, ftp in fields.items():
            p = prop["properties"][name]
            want = _JSON_TYPES.get(ftp, {"array"})
            got = _schema_types(p)
            # an integer is also a JSON number; enums list their values' type
            assert got == want or (want == {"number"} and got <= {"number", "integer"}), (
                f"{section}.{name}: schema {got}, dataclass {ftp}"
            )
    # Every default tree validates, including every preset.
    from stage1.presets import PRESETS

    for make in PRESETS.values():
        validate(to_dict(make()), "config")


def test_validate_and_schema_agree_on_enumerated_choices():
    from schemas import SchemaError, load_schema

    schema = load_schema("config")
    for section, prop in schema["properties"].items():
        for name, p in prop.get("properties", {}).items():
            for value in p.get("enum", []):  # every schema value is a valid config value ...
                override(Config(), [f"{section}.{name}={value}"]).validate()
            if "enum" in p:  # ... and a value outside the enum is refused by both
                bad = override(Config(), [f"{section}.{name}=not-a-choice"])
                with pytest.raises(ConfigError):
                    bad.validate()
                with pytest.raises(SchemaError):
                    validate(to_dict(bad), "config")


def test_head_kinds_and_family_hyperparameters_come_from_the_marked_fields():
    from heads import families
    from heads.spec import OPTIM_HPARAMS
    from stage1.config import HEAD_KINDS, sweep_fields

    assert set(HEAD_KINDS) == set(families.FAMILIES)
    traced, static = sweep_fields("traced"), sweep_fields("static")
    assert not set(traced) & set(static)
    assert set(OPTIM_HPARAMS) <= set(traced)  # every optimizer value is marked traced
    for fam in families.FAMILIES.values():
        assert set(fam.hparam_names) <= set(traced), fam.kind
    # and nothing is marked traced that no trainer reads
    used = set(OPTIM_HPARAMS).union(*(f.hparam_names for f in families.FAMILIES.values()))
    assert set(traced) == used


def test_phase_presets_are_data_over_the_same_tree():
    p2, p3, p4 = load_preset("2"), load_preset("3"), load_preset("4")
    assert p2.head.kind == p3.head.kind == p4.head.kind == "selective"
    # phase 3 = phase 2 + the DoRA fine-tune of the backbone (stage1.finetune.run_pipeline)
    assert (p2.finetune.enabled, p3.finetune.enabled) == (False, True)
    assert p3.finetune.method == "dora" and p3.finetune.sam == "none"
    assert dataclasses.replace(p3, preset="phase2", finetune=p2.finetune) == p2
    # phase 4 = phase 3 with F-SAM in the fine-tune and in the heads; nothing else differs
    assert (p4.optim.sam, p4.finetune.sam) == ("fsam", "fsam")
    assert (p4.finetune.fsam_sigma, p4.finetune.fsam_lambda) == (1.0, 0.9)
    assert dataclasses.replace(p4, preset="phase3", optim=p3.optim, finetune=p3.finetune) == p3
    assert dataclasses.replace(p4.finetune, sam="none") == p3.finetune


# ---------------------------------------------------------------------------------------------
# Every value is checked, from one declaration per field (issue 17, item 3)

_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def test_schema_states_the_same_bounds_and_choices_as_each_fields_rule():
    from schemas import load_schema
    from stage1.config import rules

    schema = load_schema("config")
    declared = rules()
    for section, prop in schema["properties"].items():
        for name, p in prop.get("properties", {}).items():
            r = declared.get(f"{section}.{name}")
            for attr, key in _BOUNDS.items():
                want = None if r is None else getattr(r, attr)
                assert p.get(key) == want, f"{section}.{name}: schema {key} vs rule {attr}"
            assert p.get("enum") == (None if r is None or r.choices is None else list(r.choices))
            want_pat = None if r is None or r.pattern is None else f"^({r.pattern})$"
            assert p.get("pattern") == want_pat, f"{section}.{name}"
            assert p.get("multipleOf") == (None if r is None else r.multiple_of)


def _edge_values(r, integer: bool):
    """(accepted, refused) values at each declared bound of a rule."""
    ok, bad = [], []
    for attr in ("gt", "ge", "lt", "le"):
        b = getattr(r, attr)
        if b is None:
            continue
        step = 1 if integer else 1e-6
        inside = b + step if attr in ("gt", "ge") else b - step
        outside = b - step if attr in ("gt", "ge") else b + step
        ok.append(b if attr in ("ge", "le") else inside)
        bad.append(b if attr in ("gt", "lt") else outside)
    return ok, bad


def test_every_bounded_field_accepts_its_bounds_and_refuses_just_outside():
    from stage1.config import rules

    checked = 0
    for key, r in rules().items():
        if r.choices or r.pattern or all(getattr(r, a) is None for a in _BOUNDS):
            continue
        integer = isinstance(_default(key), int)
        ok, bad = _edge_values(r, integer)
        for v in ok:
            if r.multiple_of and v % r.multiple_of:
                continue
            override(Config(), [f"{key}={int(v) if integer else v!r}"]).validate()
        for v in bad:
            cfg = override(Config(), [f"{key}={int(v) if integer else v!r}"])
            with pytest.raises(ConfigError, match=rf"^{key} must be in .*, got"):
                cfg.validate()
            checked += 1
    assert checked >= 30  # every bounded field was probed at least once


def _default(key):
    section, name = key.split(".")
    return getattr(getattr(Config(), section), name)


@pytest.mark.parametrize(
    "sets,match",
    [
        (["optim.lr=-1"], r"^optim\.lr must be in \(0, inf\), got -1\.0$"),
        (["optim.lr=nan"], r"optim\.lr must be finite"),
        (["optim.epochs=0"], r"^optim\.epochs must be in \[1, inf\), got 0$"),
        (["backbone.image_size=100"], r"multiple of 16"),
        (["backbone.device=gpu"], r"backbone\.device must be of the form"),
        (["optim.pos_weight=0"], r"optim\.pos_weight must be > 0 or -1"),
        (["backbone.model_kwargs=[1]"], r"backbone\.model_kwargs must be a JSON object"),
        (["backbone.variants=cls,cls"], r"backbone\.variants must be distinct"),
        (["head.feature=cls+"], r"head\.feature"),
        (["data.fractions=0.5,0.5,0.1,-0.1"], r"data\.fractions must all be >= 0"),
        (["selective.target_coverage=0"], r"selective\.target_coverage must be in \(0, 1\]"),
    ],
)
def test_out_of_range_and_cross_field_values_are_named_in_one_line(sets, match):
    with pytest.raises(ConfigError, match=match) as e:
        override(Config(), sets).validate()
    assert "\n" not in str(e.value)


def test_preset_files_are_type_checked(tmp_path):
    """JSON values are not coerced like --set strings, so validate checks their types."""
    for section, value, match in [
        ("optim", {"epochs": "40"}, r"optim\.epochs must be an integer"),
        ("optim", {"epochs": True}, r"optim\.epochs must be an integer"),
        ("optim", {"lr": "0.1"}, r"optim\.lr must be a number"),
        ("risk", {"method": 3}, r"risk\.method must be a string"),
        ("data", {"fractions": [0.5, 0.5]}, r"data\.fractions needs 4 values"),
    ]:
        f = tmp_path / "p.json"
        f.write_text(json.dumps({"preset": "phase1", section: value}))
        with pytest.raises(ConfigError, match=match):
            load_preset(str(f)).validate()
    f.write_text(json.dumps({"preset": "phase1", "optim": {"lr": 1}}))  # an int is a number
    assert load_preset(str(f)).validate().optim.lr == 1
