"""RL prompts from a dataset file on the real trainer (DeepSpeed, Redis): the epochs end the run,
the last batch is what is left, and a restart over other data is refused."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_trainer import scored_group, scorer, take_prompts  # noqa: F401  (scorer: a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import weights
from services.common.ledger import Ledger
from services.common.streams import SCORED
from services.trainer.feeder import SourceChanged
from services.trainer.rl import RLTrainer


def gsm8k_parquet(path, pairs):
    rows = [{"question": f"{a}+{b}", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"} for a, b in pairs]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_rl_on_a_parquet_file_ends_with_its_epoch_and_trains_every_prompt(s, make_config, redis_server,
                                                                           tiny_model_dir, scorer, tmp_path):  # noqa: F811
    data = gsm8k_parquet(tmp_path / "gsm8k.parquet", [(3, 4), (12, 30), (5, 5)])
    cfg = make_config("trainer.groups_per_step=2", "trainer.total_steps=100", f"data.train={data}",
                      "data.epochs=1", "trainer.drop_zero_variance=false", f"redis.prefix={s.prefix}",
                      redis_url=redis_server.url)
    trainer = RLTrainer(cfg, s, "trainer-test")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer.feeder.top_up(0)
    prompts = take_prompts(s, 10)
    assert len(prompts) == 3  # the epoch holds three, though four fit in flight
    assert sorted(p.gold for p in prompts) == ["10", "42", "7"]
    assert sorted(p.origin for p in prompts) == [f"gsm8k.parquet#{i}" for i in range(3)]
    assert all(p.text.startswith("Q:") and p.text.endswith("\nA:") for p in prompts)
    for p in prompts:
        s.publish(SCORED, scored_group(p, tok, model, scorer))
    records = []
    for _ in range(40):
        if trainer.done:
            break
        record = trainer.run_once()
        if record:
            records.append(record)
    assert trainer.done and not trainer.stopping
    assert [r["step"] for r in records] == [1, 2]  # a full batch, then the one group left
    trainer.finish()
    counts = Ledger(s).counts()
    assert counts["enqueued"] == counts["trained"] == 3
    assert weights.latest(s).version == 2
    # a restart of this run over another file would count its cursor in the wrong data
    other = gsm8k_parquet(tmp_path / "other.parquet", [(1, 1), (2, 2), (3, 3)])
    with pytest.raises(SourceChanged, match="counts in another prompt source"):
        RLTrainer(make_config("trainer.groups_per_step=2", f"data.train={other}", f"redis.prefix={s.prefix}",
                              redis_url=redis_server.url), s, "trainer-test")
