import json

import jsonschema
import pytest

import schemas
from stage1.artifacts import read_json, write_json


@pytest.mark.parametrize("name", schemas.available())
def test_every_schema_is_valid_draft_2020_12(name):
    jsonschema.Draft202012Validator.check_schema(schemas.load_schema(name))


def test_expected_schemas_ship():
    assert {"config", "feature_cache", "metrics", "thresholds"} <= set(schemas.available())


def test_write_validates_and_is_atomic(tmp_path):
    good = {
        "split": "test",
        "n": 3,
        "n_positives": 1,
        "metrics": {
            "auroc": 0.9,
            "accuracy": 0.8,
            "mcc": 0.5,
            "fnr": 0.0,
            "fpr": 0.1,
            "exit_rate": 0.4,
        },
    }
    p = write_json(tmp_path / "m.json", good, schema="metrics")
    assert read_json(p, schema="metrics") == good
    bad = dict(good, metrics={"auroc": 0.9})
    with pytest.raises(schemas.SchemaError, match="accuracy"):
        write_json(tmp_path / "m.json", bad, schema="metrics")
    assert json.loads(p.read_text()) == good  # the old file survived the failed write
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]  # no temp files left behind
    p.write_text(json.dumps(bad))
    with pytest.raises(schemas.SchemaError):
        read_json(p, schema="metrics")
    with pytest.raises(KeyError, match="no schema named"):
        schemas.load_schema("nope")
