"""`t1 ablate`: refusals before any run starts, and the table it writes from measured runs."""

from typer.testing import CliRunner

from services.ablate import VARIANTS, slug, write_ablation
from services.cli import app
from services.common.config import load_config
from services.evaluation import Accuracy


def test_ablate_refuses_a_missing_model_and_unknown_variants(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["ablate", "--model", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no model at" in res.output
    (tmp_path / "config.json").write_text("{}")
    res = runner.invoke(app, ["ablate", "--model", str(tmp_path), "--variant", "K=3"])
    assert res.exit_code == 2 and "unknown variant" in res.output and "K=4" in res.output


def test_the_table_compares_every_variant_with_the_preset(tmp_path):
    cfg = load_config("quick", environ={})
    steps = [{"step": i, "reward_mean": r} for i, r in enumerate((0.1, 0.2, 0.3, 0.5), 1)]
    runs = {name: {"sets": sets, "steps": steps, "seconds": 10.0, "final": "x"}
            for name, sets in VARIANTS.items()}
    acc = {"SFT start": 0.30, "T1 (preset)": 0.50, "no entropy bonus": 0.45, "fixed anchor": 0.52, "K=4": 0.40}
    evals = {label: {"accuracy": Accuracy(a, a, a, a, 4, 40), "scaling": {8: a}} for label, a in acc.items()}
    report = write_ablation(tmp_path, cfg, runs, evals)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.read_text().splitlines()
            if line.startswith("| ") and "---" not in line}
    assert "| -0.050 |" in rows["no entropy bonus"] and "trainer.entropy_coef=0" in rows["no entropy bonus"]
    assert "| +0.020 |" in rows["fixed anchor"] and "| -0.100 |" in rows["K=4"]
    assert "| -0.200 |" in rows["SFT start"] and "no RL" in rows["SFT start"]
    assert "+0.333" in rows["T1 (preset)"]  # mean of the last three steps' reward
    assert (tmp_path / "ablate.png").stat().st_size > 0 and (tmp_path / "ablate.json").exists()
    assert len({slug(n) for n in VARIANTS}) == len(VARIANTS)


def test_scaling_refuses_bad_budgets_and_missing_models(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["scaling", "--model", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a model directory" in res.output
    (tmp_path / "config.json").write_text("{}")
    res = runner.invoke(app, ["scaling", "--model", str(tmp_path), "--budgets", "8,x"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output
    res = runner.invoke(app, ["scaling", "--model", str(tmp_path), "--budgets", "8,4096"])
    assert res.exit_code == 2 and "generator.max_tokens" in res.output


def test_up_refuses_a_mistyped_model_path_instead_of_building_a_tiny_one(tmp_path):
    """`t1 up` builds the tiny default only at the preset's own model.path."""
    missing = tmp_path / "Qwen2.5-1.5b-typo"
    res = CliRunner().invoke(app, ["up", "--config", "quick", "--set", f"model.path={missing}",
                                   "--set", f"run_dir={tmp_path / 'run'}"])
    assert res.exit_code == 2 and "no model at" in res.output, res.output
    assert not missing.exists() and not (tmp_path / "run").exists()
