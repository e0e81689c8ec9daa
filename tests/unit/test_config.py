import pytest
from pydantic import ValidationError

from services.common.config import dump_config, load_config


def test_preset_then_env_then_cli_override(tmp_path):
    cfg = load_config("tiny", ["trainer.lr=3e-6"],
                      environ={"T1__TRAINER__LR": "1e-5", "T1__GENERATOR__SAMPLES_PER_PROMPT": "4"})
    assert cfg.trainer.lr == 3e-6  # CLI beats env
    assert cfg.generator.samples_per_prompt == 4  # env beats preset
    assert cfg.trainer.sft_steps == 2400  # from the preset


def test_config_file_roundtrip(tmp_path):
    cfg = load_config("quick", environ={})
    path = tmp_path / "c.yaml"
    dump_config(cfg, path)
    assert load_config(str(path), environ={}) == cfg


def test_unknown_key_is_an_error():
    with pytest.raises(ValidationError, match="bogus"):
        load_config("tiny", ["trainer.bogus=1"], environ={})


def test_unknown_preset_lists_presets():
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_config("nope", environ={})


def test_override_without_equals_is_an_error():
    with pytest.raises(ValueError, match="key=value"):
        load_config("tiny", ["trainer.lr"], environ={})


def test_numeric_looking_strings_from_env_stay_strings():
    cfg = load_config("tiny", environ={"T1__VERIFIER__AUTH_TOKEN": "123456"})
    assert cfg.verifier.auth_token == "123456"
    with pytest.raises(ValidationError):
        load_config("tiny", environ={"T1__TRAINER__LR": "fast"})  # numbers are still checked


def test_overrides_on_a_built_config_are_validated():
    from services.common.config import with_overrides

    cfg = load_config("tiny", environ={})
    changed = with_overrides(cfg, ["trainer.entropy_coef=0", "generator.samples_per_prompt=4"])
    assert changed.trainer.entropy_coef == 0 and changed.generator.samples_per_prompt == 4
    assert changed.trainer.lr == cfg.trainer.lr and cfg.generator.samples_per_prompt == 8
    with pytest.raises(ValueError):
        with_overrides(cfg, ["trainer.no_such_key=1"])


def test_evaluation_samples_at_the_generator_temperature_unless_told_otherwise():
    from services.common.config import with_overrides

    cfg = with_overrides(load_config("tiny", environ={}), ["generator.temperature=0.7"])
    assert cfg.eval_sampling_temperature == 0.7  # default: what RL samples at
    fixed = with_overrides(cfg, ["eval_temperature=1.0"])
    assert fixed.eval_sampling_temperature == 1.0 and fixed.generator.temperature == 0.7
    with pytest.raises(ValueError, match="eval_temperature"):
        with_overrides(cfg, ["eval_temperature=0"])


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    from services.common.config import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  lr: [1,\n")
    with pytest.raises(ValueError) as err:
        load_config(str(bad), environ={})
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "line 3" in message and "not valid YAML" in message


def test_a_mistyped_local_model_path_is_refused_in_one_line(tmp_path, tiny_model_dir):
    from services.common.runtime import require_model

    require_model(str(tiny_model_dir), "generator")  # a model: fine
    require_model("Qwen/Qwen2.5-1.5B", "generator")  # not a local path: the hub loader's to judge
    for path, why in ((str(tmp_path / "nope"), "no such directory"), (str(tmp_path), "no config.json")):
        with pytest.raises(SystemExit) as err:
            require_model(path, "generator")
        assert why in str(err.value) and "\n" not in str(err.value)


def test_cpu_worker_binding_splits_the_cores():
    from services.generator.engine import cpu_worker_binding

    assert cpu_worker_binding(2, [0, 1]) == "0|1"
    assert cpu_worker_binding(2, [0, 1, 2, 3, 4]) == "0,1|2,3"
    with pytest.raises(ValueError, match="core per worker"):
        cpu_worker_binding(3, [0, 1])


def test_a_file_of_a_few_keys_layers_on_the_default_preset(tmp_path):
    """A user's file changes the keys it names only (it once replaced the whole preset: an SFT
    then ran 0 steps)."""
    few = tmp_path / "few.yaml"
    few.write_text("trainer:\n  sft_steps: 5\n")
    cfg, tiny = load_config(str(few), environ={}), load_config("tiny", environ={})
    assert cfg.trainer.sft_steps == 5
    assert cfg.model_dump() == tiny.model_copy(update={"trainer": tiny.trainer.model_copy(
        update={"sft_steps": 5})}).model_dump()
    # env and --set still come after the file
    cfg = load_config(str(few), ["trainer.sft_steps=7"], environ={"T1__TRAINER__LR": "0.5"})
    assert cfg.trainer.sft_steps == 7 and cfg.trainer.lr == 0.5


def test_extends_names_the_base_a_preset_or_a_file_or_none(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: quick\ntrainer:\n  lr: 0.25\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text("extends: ../base.yaml\ntrainer:\n  total_steps: 9\n")
    cfg, quick = load_config(str(tmp_path / "sub" / "run.yaml"), environ={}), load_config("quick", environ={})
    assert (cfg.trainer.total_steps, cfg.trainer.lr) == (9, 0.25)
    assert cfg.run_dir == quick.run_dir and cfg.task == quick.task  # the rest is quick's
    (tmp_path / "alone.yaml").write_text("extends: null\ntrainer:\n  total_steps: 9\n")
    alone = load_config(str(tmp_path / "alone.yaml"), environ={})
    assert alone.run_dir == "runs/default" and alone.trainer.sft_steps == 0  # the model defaults


def test_extends_refuses_cycles_and_nonsense_in_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match=r"extends itself \(a.yaml -> b.yaml -> a.yaml\)"):
        load_config(str(tmp_path / "a.yaml"), environ={})
    (tmp_path / "c.yaml").write_text("extends: [quick]\n")
    with pytest.raises(ValueError, match="extends must name a preset or a YAML file"):
        load_config(str(tmp_path / "c.yaml"), environ={})
    (tmp_path / "d.yaml").write_text("extends: nonexistent\n")
    with pytest.raises(FileNotFoundError, match="no config file or preset named 'nonexistent'"):
        load_config(str(tmp_path / "d.yaml"), environ={})


def test_a_dumped_config_stands_alone(tmp_path):
    """What a stack writes for its services is not layered on any preset: a mapping in it
    (mix_weights) is exactly the one dumped, never merged with a preset's."""
    cfg = load_config("tiny", ["task.name=mix", "task.mix_weights={linear: 1.0}"], environ={})
    dump_config(cfg, tmp_path / "c.yaml")
    assert (tmp_path / "c.yaml").read_text().startswith("extends: null\n")
    assert load_config(str(tmp_path / "c.yaml"), environ={}).task.mix_weights == {"linear": 1.0}


def test_sft_with_no_steps_is_refused_instead_of_copying_the_model(tmp_path):
    from typer.testing import CliRunner

    from services.cli import app

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "alone.yaml").write_text("extends: null\n")  # the model defaults: sft_steps 0
    res = CliRunner().invoke(app, ["sft", "--data", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "m"),
                                   "--out", str(tmp_path / "out"), "--config", str(tmp_path / "alone.yaml")])
    assert res.exit_code == 2 and "trainer.sft_steps is 0" in res.output
    assert not (tmp_path / "out").exists()
