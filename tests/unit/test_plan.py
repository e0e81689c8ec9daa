"""`t1 plan`: the GPU presets fit their stated hardware, impossible layouts are refused in one
line, and the arithmetic matches the real models' parameter counts."""

import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from services.cli import app
from services.common.config import load_config
from services.plan import KNOWN_SHAPES, PlanError, model_shape, plan


def cfg_of(preset, *sets):
    return load_config(preset, list(sets))


@pytest.mark.parametrize("tied", [True, False])
def test_the_parameter_count_is_the_models_own(tmp_path, tied):
    qc = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(qc)
    qc.save_pretrained(tmp_path)
    shape, source = model_shape(cfg_of("tiny", f"model.path={tmp_path}"))
    assert source.endswith("config.json")
    assert shape.params == sum(p.numel() for p in model.parameters())  # tied: the head is the embedding


def test_known_shapes_match_the_published_sizes():
    billions = {name: KNOWN_SHAPES[name].params / 1e9 for name in ("qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-32b")}
    assert billions["qwen2.5-1.5b"] == pytest.approx(1.54, abs=0.01)
    assert billions["qwen2.5-7b"] == pytest.approx(7.62, abs=0.01)
    assert billions["qwen2.5-32b"] == pytest.approx(32.76, abs=0.01)


def test_the_one_node_preset_fits_eight_80gb_gpus():
    p = plan(cfg_of("qwen2.5-1.5b-math"))
    assert p.on_gpus and len(p.nodes) == 1
    assert p.nodes[0] == [f"trainer rank {i}" for i in range(4)] + [f"generator {i}" for i in range(4)]
    assert p.trainer.total <= 80 and p.generator.total <= 80
    assert "trainer.ranksPerPod=4" in p.deploy[0] and "generator.replicas=4" in p.deploy[0]


def test_the_paper_preset_spreads_over_four_h200_nodes():
    cfg = cfg_of("qwen2.5-32b-t1")
    assert (cfg.generator.samples_per_prompt, cfg.generator.temperature, cfg.generator.top_p) == (64, 1.2, 0.95)
    assert (cfg.trainer.lr, cfg.trainer.kl_coef, cfg.trainer.groups_per_step) == (1.5e-6, 2e-4, 32)
    p = plan(cfg)
    assert [n[0] for n in p.nodes] == ["trainer rank 0", "trainer rank 8", "generator 0 shard 0",
                                       "generator 2 shard 0"]
    assert p.trainer.capacity == 139 and p.trainer.total <= 139
    # ZeRO-3 splits the policy's states over the 16 ranks; the anchor stays whole on each
    shape = KNOWN_SHAPES["qwen2.5-32b"]
    assert p.trainer.parts["weights"] == pytest.approx(2 * shape.params / 16 / 2**30)
    assert p.trainer.parts["anchor"] == pytest.approx(2 * shape.params / 2**30)
    assert "trainer.replicas=2 trainer.ranksPerPod=8" in p.deploy[0]


@pytest.mark.parametrize("sets, says", [
    (["placement.gpu_memory_gib=80"], "the anchor is a full copy on every rank"),
    (["placement.nodes=3"], "hold only 2 generator(s)"),
    (["generator.tensor_parallel_size=3"], "does not divide the model's 40 attention heads"),
    (["generator.tensor_parallel_size=20", "placement.generators=1"], "exceed placement.gpus_per_node"),
    (["placement.trainer_ranks=12"], "not a multiple of placement.gpus_per_node"),
    (["placement.trainer_ranks=40"], "needs 5 nodes"),
    (["generator.max_model_len=4096"], "exceed the engine's context (4096"),
    (["generator.weight_gate_tolerance=1e-4"], "every version would be refused"),
    (["trainer.micro_batch_tokens=0"], "trainer rank needs"),  # the whole batch share in one pass
    # a 32k context on one GPU of a 32B engine: vLLM would refuse to start
    (["generator.tensor_parallel_size=1", "generator.max_model_len=null", "generator.gpu_memory_utilization=0.5"],
     "cannot hold one 32768-token context"),
])
def test_a_layout_that_cannot_work_is_refused_in_one_line(sets, says):
    with pytest.raises(PlanError) as err:
        plan(cfg_of("qwen2.5-32b-t1", *sets))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_data_parallel_copies_take_their_gpus_side_by_side():
    p = plan(cfg_of("qwen2.5-1.5b-math", "generator.data_parallel_size=2", "placement.generators=2"))
    assert p.nodes[0][4:] == ["generator 0 copy 0", "generator 0 copy 1", "generator 1 copy 0", "generator 1 copy 1"]
    assert "generator.replicas=2 (limits nvidia.com/gpu: 2)" in p.deploy[0]
    with pytest.raises(PlanError, match="hold only 2 generator"):
        plan(cfg_of("qwen2.5-1.5b-math", "generator.data_parallel_size=2"))  # 4 x 2 GPUs beside the trainer's 4


def test_offloading_the_anchor_counts_the_larger_pass_instead_of_both():
    base = plan(cfg_of("qwen2.5-1.5b-math")).trainer
    off = plan(cfg_of("qwen2.5-1.5b-math", "trainer.anchor_offload=true")).trainer
    both = base.parts["anchor"] + base.parts["activations"]
    assert off.total == pytest.approx(base.total - both + max(base.parts["anchor"], base.parts["activations"]),
                                      rel=0.01)


def test_more_ranks_shrink_only_what_zero_partitions():
    two = plan(cfg_of("qwen2.5-1.5b-math", "placement.trainer_ranks=2", "placement.generators=6")).trainer
    four = plan(cfg_of("qwen2.5-1.5b-math")).trainer
    assert two.parts["weights"] == four.parts["weights"]  # ZeRO-2 keeps whole weights
    assert two.parts["optimizer states"] == pytest.approx(2 * four.parts["optimizer states"])
    assert two.parts["anchor"] == four.parts["anchor"]


def test_a_cpu_run_is_estimated_in_host_memory_and_checked_against_it():
    p = plan(cfg_of("tiny"))
    assert not p.on_gpus and p.nodes == [] and p.trainer.capacity is None
    with pytest.raises(PlanError, match="placement.node_memory_gib 0.5"):
        plan(cfg_of("tiny", "placement.node_memory_gib=0.5"))


def test_a_model_path_without_a_config_needs_a_named_shape(tmp_path):
    with pytest.raises(PlanError, match="has no config.json here"):
        plan(cfg_of("qwen2.5-1.5b-math", "placement.model=null"))
    with pytest.raises(PlanError, match="not a known shape"):
        plan(cfg_of("qwen2.5-1.5b-math", "placement.model=Llama-9000"))
    # a config.json at model.path wins over the name
    Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4).save_pretrained(tmp_path)
    shape, _ = model_shape(cfg_of("qwen2.5-1.5b-math", f"model.path={tmp_path}"))
    assert shape.layers == 2


def test_the_cli_prints_the_layout_or_one_line_and_exit_2():
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--config", "qwen2.5-32b-t1"])
    assert ok.exit_code == 0, ok.output
    text = " ".join(ok.output.split())
    assert "trainer rank 15" in text and "generator 3 shard 3" in text and "KV cache" in text
    bad = runner.invoke(app, ["plan", "--config", "qwen2.5-32b-t1", "--set", "placement.gpu_memory_gib=80"])
    assert bad.exit_code == 2
    assert "cannot work" in bad.output and "Traceback" not in bad.output

