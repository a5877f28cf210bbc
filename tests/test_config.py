"""Strict configs: unknown and mistyped fields are named; overrides parse as YAML."""
from __future__ import annotations

import pytest

from x2core.config import apply_overrides, from_dict, to_dict
from x2core.errors import ConfigError
from x2core.model.config import ModelConfig


def test_round_trip_and_nested_types():
    cfg = from_dict(ModelConfig, {"vision": {"image_size": 384}, "text": {"name": "xlm-roberta"}})
    assert cfg.vision.image_size == 384 and cfg.text.name == "xlm-roberta"
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, needle", [
    ({"vision": {"widht": 3}}, "unknown config field 'vision.widht'; did you mean 'width'?"),
    ({"vison": {}}, "unknown config field 'vison'; did you mean 'vision'?"),
    ({"vision": {"depth": "12"}}, "'vision.depth' must be an integer"),
    ({"vision": {"attn_impl": "flash"}}, "'vision.attn_impl' must be one of"),
    ({"vision": {"image_size": 100}}, "must be a multiple of 'vision.patch_size'"),
    ({"temp": 0.9}, "'temp' (0.9) must lie in"),
    ({"embed_dim": True}, "'embed_dim' must be an integer"),
])
def test_bad_fields_are_named(data, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(ModelConfig, data)
    assert needle in str(err.value)


def test_dotlist_overrides():
    data = apply_overrides({"vision": {"depth": 2}}, ["vision.depth=4", "text.options={a: 1}", "temp=0.05"])
    cfg = from_dict(ModelConfig, data)
    assert cfg.vision.depth == 4 and cfg.text.options == {"a": 1} and cfg.temp == 0.05
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["vision.depth"])
