"""The configuration refuses what would run but mean nothing (issues 13 item 6 and 16 item 7)."""

from __future__ import annotations

import json
import math

import pytest

from dualrec.channels import channel_k, register, registered_names, unregister
import dualrec.config as config_module
from dualrec.config import ConfigError, DualRecConfig
from jobs.cli import main
from jobs.common import UsageError, load_config


def _refused(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        DualRecConfig.from_dict(data)
    assert isinstance(e.value, ValueError)  # the CLI maps ValueError to exit 2
    return str(e.value)


def test_nested_typo_is_refused_naming_its_path(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("rank:\n  beta:\n    likes: 1.0\n")
    with pytest.raises(ConfigError, match=r"rank\.beta\.likes"):
        DualRecConfig.load(y)
    assert "two_tower.dimm" in _refused({"two_tower": {"dimm": 8}})
    assert "metrics.max_item" in _refused({"metrics": {"max_item": 8}})


def test_unknown_key_inside_retrieval_k_is_refused():
    msg = _refused({"retrieval": {"k": {"two_towr": 100}}})
    assert "retrieval.k" in msg and "two_towr" in msg
    with pytest.raises(ConfigError, match="two_towr"):
        DualRecConfig().with_override("retrieval.k.two_towr", "100")


def test_choices_are_enums_in_the_schema():
    schema = DualRecConfig.model_json_schema()
    props = {name: d["properties"] for name, d in schema["$defs"].items()}
    assert props["DispatchConfig"]["policy"]["enum"] == ["arrival", "matching", "paced", "optimal"]
    assert "engine" not in props["DispatchConfig"]  # the second dispatch engine is gone (issue 13.5)
    assert props["ActivityConfig"]["policy"]["enum"] == ["top_n", "value", "probability"]
    assert set(props["RankConfig"]["beta"]["propertyNames"]["enum"]) == {
        "like", "comment", "follow", "share", "profile_enter", "long_view"}
    assert "dispatch.policy" in _refused({"dispatch": {"policy": "Arrival"}})


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("activity", "slack", 0.0),
        ("activity", "slack", -1.0),
        ("activity", "slack", math.nan),
        ("activity", "slack", math.inf),
        ("activity", "probability_threshold", 0.0),
        ("activity", "probability_threshold", 1.5),
        ("activity", "probability_threshold", math.nan),
        ("activity", "learning_rate", math.inf),
        ("activity", "lookback_days", 0),
        ("dispatch", "boost_lambda", 0.0),
        ("dispatch", "boost_lambda", -0.5),
        ("dispatch", "boost_lambda", math.nan),
        ("dispatch", "batches_per_day", 100_000),
        ("two_tower", "epochs", 0),
        ("two_tower", "lr", -0.1),
        ("two_tower", "item_id_dropout", 1.5),
        ("two_tower", "recall_target", 0.0),
        ("rank", "epochs", 0),
        ("rank", "theta_prior_strength", 0.0),
        ("similarity", "item_k", 0),
        ("similarity", "user_k", -3),
        ("metrics", "max_items", 0),
        ("seed", None, -1),
    ],
)
def test_numeric_knobs_are_finite_and_bounded(section, key, value):
    data = {section: value} if key is None else {section: {key: value}}
    path = section if key is None else f"{section}.{key}"
    msg = _refused(data)
    assert path in msg and repr(value) in msg, msg  # names the key and the bad value


def test_per_channel_k_and_beta_weights_are_bounded():
    assert "retrieval.k.two_tower" in _refused({"retrieval": {"k": {"two_tower": 0}}})
    assert "retrieval.k.i2i2u" in _refused({"retrieval": {"k": {"i2i2u": -5}}})
    assert "rank.beta.share" in _refused({"rank": {"beta": {"share": -1.0}}})
    assert "rank.beta.like" in _refused({"rank": {"beta": {"like": math.inf}}})


def test_every_numeric_knob_states_its_range_in_the_schema():
    schema = DualRecConfig.model_json_schema()
    unbounded = []
    for sec, d in [("", schema), *schema["$defs"].items()]:
        for name, p in d.get("properties", {}).items():
            for node in (p, p.get("additionalProperties") or {}):
                if node.get("type") in ("integer", "number") and not ({"minimum", "exclusiveMinimum"} & set(node)):
                    unbounded.append(f"{sec}.{name}")
    assert not unbounded, unbounded
    tt = schema["$defs"]["TwoTowerConfig"]["properties"]
    assert tt["epochs"]["minimum"] == 1 and tt["item_id_dropout"]["maximum"] == 1
    assert schema["$defs"]["ActivityConfig"]["properties"]["slack"]["exclusiveMinimum"] == 0


def test_a_bool_is_not_an_int():
    assert "dispatch.Q" in _refused({"dispatch": {"Q": True}})
    assert "dispatch.L" in _refused({"dispatch": {"L": 5.0}})
    with pytest.raises(ConfigError, match="dispatch.Q"):
        DualRecConfig().with_override("dispatch.Q", "true")
    cfg = DualRecConfig()
    with pytest.raises(ValueError):  # assignments are validated too
        cfg.dispatch.Q = True
    assert cfg.dispatch.Q == 10


def test_set_of_a_non_number_for_a_float_is_refused():
    with pytest.raises(ConfigError, match=r"rank\.beta\.like.*'abc'"):
        DualRecConfig.load(None, {"rank.beta.like": "abc"})
    assert DualRecConfig.load(None, {"rank.beta.like": "4"}).rank.beta["like"] == 4.0


def test_set_reaches_spark_conf_keys_with_dots():
    cfg = DualRecConfig.load(None, {"spark.conf.spark.executor.memory": "4g", "spark.conf.spark.executor.cores": "4",
                                    "spark.conf.spark.sql.adaptive.enabled": "true"})
    assert cfg.spark.conf == {"spark.executor.memory": "4g", "spark.executor.cores": "4",
                              "spark.sql.adaptive.enabled": "true"}
    # credentials stay refused through this path, and are not echoed
    with pytest.raises(ConfigError, match="must not hold credentials") as e:
        DualRecConfig.load(None, {"spark.conf.spark.hadoop.fs.s3a.secret.key": "VERYSECRET"})
    assert "VERYSECRET" not in str(e.value)


def test_unknown_channel_is_refused_at_load_against_the_registry(monkeypatch):
    msg = _refused({"retrieval": {"channels": ["two_tower", "ghost"], "k": {"ghost": 3}}})
    assert "retrieval.channels" in msg and "ghost" in msg
    assert "listed twice" in _refused({"retrieval": {"channels": ["i2i2u", "i2i2u"]}})
    assert "retrieval.channels" in _refused({"retrieval": {"channels": []}})
    # the registry is the one list of names: a channel registered later is accepted, with its K
    register("ghost", "tests.test_channels:EchoChannel")
    try:
        assert "ghost" in registered_names()
        cfg = DualRecConfig.from_dict({"retrieval": {"channels": ["two_tower", "ghost"], "k": {"ghost": 3}}})
        assert cfg.retrieval.k["ghost"] == 3
        # without an override, K is the one the channel declares
        cfg = DualRecConfig.from_dict({"retrieval": {"channels": ["ghost"]}})
        assert channel_k(cfg, "ghost") == 100
    finally:
        unregister("ghost")


def test_entry_points_check_channel_names_at_load(monkeypatch):
    """Every entry point (dualrec CLI, spark-submit jobs/<stage>.py) loads through load_config,
    which installs the channel registry: a stage that never retrieves still refuses a typo."""
    monkeypatch.setattr(config_module, "_channel_registry", None)
    with pytest.raises(UsageError, match=r"retrieval\.channels.*ghost"):
        load_config(None, ["retrieval.channels=[two_tower, ghost]", "retrieval.k.ghost=3"])
    with pytest.raises(UsageError, match=r"retrieval\.k.*two_towr"):
        load_config(None, ["retrieval.k.two_towr=3"])


def test_cli_config_show_prints_the_effective_config_and_its_schema(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("dispatch:\n  L: 50\n")
    assert main(["config", "show", "--json", "--config", str(y), "--set", "dispatch.Q=3",
                 "--set", "spark.conf.spark.executor.memory=4g"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["dispatch"]["L"], shown["dispatch"]["Q"]) == (50, 3)
    assert shown["spark"]["conf"] == {"spark.executor.memory": "4g"}
    assert DualRecConfig.from_dict(shown) == DualRecConfig.load(y, {"dispatch.Q": "3", "spark.conf.spark.executor.memory": "4g"})
    assert main(["config", "show"]) == 0
    assert "boost_lambda: 1.0" in capsys.readouterr().out
    assert main(["config", "show", "--json-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["dispatch"] and "DispatchConfig" in schema["$defs"]


def test_cli_config_error_exits_2_naming_key_and_value(capsys):
    assert main(["config", "show", "--set", "activity.slack=-1"]) == 2
    err = capsys.readouterr().err
    assert "activity.slack" in err and "-1" in err
