"""In-loop evaluation on held-out data (eval.data, eval.every_steps) as eval/... fields of metrics.jsonl:
SFT's held-out loss equals transformers' on the final export; DPO and RM report held-out preference
accuracy and margin; RL reports greedy pass@1 and the verified rate per dataset through its engine and
verifiers, every N steps and after the last."""

import json

import torch

from tests.conftest import metrics, open_instruct_labels, train

TINY = ["model=tiny", "runtime.device=cpu", "metrics.progress=false"]


def _held_out(tmp_path, source: str, skip: int, n: int):
    """`n` rows of a built-in data set after its first `skip` (the training run takes the first ones)."""
    from tulu_mcore.data.sources import BUILTIN

    rows = BUILTIN[source].read_text().splitlines()[skip:skip + n]
    path = tmp_path / f"{source.split(':')[1]}-heldout.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path, [json.loads(r) for r in rows]


def test_sft_heldout_loss_is_transformers_loss_on_the_export(tmp_path, data_cache):
    from transformers import AutoTokenizer, LlamaForCausalLM

    held, rows = _held_out(tmp_path, "builtin:sft-demo", 200, 6)
    run = tmp_path / "run"
    train(["recipe=sft", *TINY, f"run.dir={run}", f"data.cache_dir={data_cache}", "train.max_steps=3",
           "train.global_batch_size=4", f"eval.data={held}", "eval.every_steps=2", "optim.lr=1e-3"], nproc=2)
    m = metrics(run)
    assert ["eval/loss" in r for r in m] == [False, True, True]  # after step 2 and after the last
    assert m[1]["eval/sequences"] == m[2]["eval/sequences"] == 6 and m[2]["eval/loss"] != m[1]["eval/loss"]
    tok = AutoTokenizer.from_pretrained(run / "hf")
    model = LlamaForCausalLM.from_pretrained(run / "hf", dtype=torch.float32).eval()
    total = tokens = 0.0
    for row in rows:
        ids, labels = open_instruct_labels(tok, row["messages"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
        tokens += (target != -100).sum().item()
    assert abs(m[2]["eval/loss"] - total / tokens) <= 1e-4 * total / tokens, (m[2]["eval/loss"], total / tokens)


def test_dpo_and_rm_report_heldout_preference_accuracy(tmp_path, data_cache):
    held, rows = _held_out(tmp_path, "builtin:preference-demo", 100, 8)
    for recipe in ("dpo", "rm"):
        run = tmp_path / recipe
        train([f"recipe={recipe}", *TINY, f"run.dir={run}", f"data.cache_dir={data_cache}", "train.max_steps=2",
               "train.global_batch_size=4", "train.seq_length=256", "train.export_hf=false", f"eval.data={held}"],
              nproc=2)
        m = metrics(run)
        assert "eval/accuracy" not in m[0] and m[1]["eval/pairs"] == 8, m[1]
        assert 0 <= m[1]["eval/accuracy"] <= 1 and m[1]["eval/accuracy"] * 8 == round(m[1]["eval/accuracy"] * 8)
        assert abs(m[1]["eval/margin"]) < 100 and m[1]["eval/loss"] > 0


def test_rl_reports_greedy_pass_at_1_per_dataset(tmp_path, data_cache):
    held, rows = _held_out(tmp_path, "builtin:rlvr-demo", 100, 6)
    run = tmp_path / "run"
    train(["recipe=rlvr_grpo", *TINY, f"run.dir={run}", f"data.cache_dir={data_cache}", "train.max_steps=2",
           "train.global_batch_size=2", "rlvr.samples_per_prompt=2", "rlvr.max_new_tokens=6", "train.export_hf=false",
           f"eval.data={held}", "eval.every_steps=1", "eval.max_new_tokens=4"], nproc=2)
    m = metrics(run)
    datasets = {r["dataset"].lower() for r in rows}
    for r in m:
        assert r["eval/prompts"] == 6 and 0 <= r["eval/pass_at_1"] <= 1 and r["eval/response_length"] <= 4
        assert {k.removeprefix("eval/pass_at_1_") for k in r if k.startswith("eval/pass_at_1_")} == datasets
        assert 0 <= r["eval/truncation_rate"] <= 1 and r["eval_s"] > 0
