"""``tulu-demo``: the built-in tiny default, end to end on this machine.

0. Decontamination (``tulu-decontam``) of the built-in training data against the built-in held-out
   prompts (new arithmetic problems; new questions asking for a trained response format): the stages
   train on the filtered copies in ``<out>/decontam/``, whose report says what overlapped.
1. Tülu 3 SFT of the tiny Llama (random weights, the built-in tokenizer) on the built-in demo
   conversations, with checkpoints and a Hugging Face export: ``tulu-train recipe=sft model=tiny`` with
   the run directory below.
2. On-policy preference pairs: a judge (the SFT model taught the judge's answer format by a short SFT
   on the built-in judge lessons, ``<out>/judge``), then ``tulu-synth preferences`` on the megatron
   engine in the same ranks: two completions of each of 40 demo prompts from the SFT checkpoint, each
   rated by the judge on Tülu 3's four aspects, binarized into chosen/rejected and decontaminated
   (``<out>/onpolicy/``: pairs.jsonl, report.md); then a short DPO of the SFT model on those pairs
   (``<out>/dpo_onpolicy``), scored on the held-out prompts beside the main chain. A tiny judge is
   noisy: the main chain's DPO keeps to the built-in pairs.
3. Tülu 3 DPO of the SFT model on the built-in preference pairs (correct vs wrong answers), the
   reference log-probs cached before training: ``tulu-train recipe=dpo model.init=<the SFT run>``.
4. RL with verifiable rewards (GRPO, Tülu 3.1) from the DPO model on the built-in verifiable prompts
   (arithmetic with exact answers, instructions with checkable constraints), rollouts from the megatron
   engine: ``tulu-train recipe=rlvr_grpo model.init=<the DPO run>``.
   The stages go one after another in one launch of 2 ranks (torchrun; CPU unless a GPU is visible):
   the ranks start once.
5. A check of SFT's export against its final checkpoint (``tulu-convert verify`` at TP2).
6. ``tulu-eval`` of each stage's export (SFT, DPO, RLVR) on the held-out prompts (task ``demo_tulu``:
   greedy answers verified by the RLVR verifiers, averaged over the two kinds), a table and
   ``<out>/eval.png``; each stage's full results in ``<out>/eval/<stage>/``.
7. A summary (also in ``<out>/summary.json``): the loss curves, tokens/s, packing efficiency, DPO's
   preference accuracy and margin, the verified rate of RLVR's rollouts per dataset (first vs last
   quarter of the steps), the held-out scores, and the final model answering a prompt through
   ``transformers``; the on-policy stage's counts (pairs, the judge's parse failures) and throughput.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from tulu_mcore.errors import UserError, cli_errors

BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    pts = [sum(values[i:i + step]) / len(values[i:i + step]) for i in range(0, len(values), step)]
    lo, hi = min(pts), max(pts)
    return "".join(BARS[1 + int((v - lo) / (hi - lo + 1e-12) * (len(BARS) - 2))] for v in pts)


def _say(msg: str) -> None:
    print(f"[tulu-demo] {msg}", flush=True)


def generate(hf_dir: Path, question: str, max_new_tokens: int = 24) -> str:
    """Greedy answer of the exported model to one user turn, through transformers."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    prompt = f"<|user|>\n{question}\n<|assistant|>\n"  # the Tülu template's generation prompt
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    p = argparse.ArgumentParser(prog="tulu-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory, replaced on each run (default runs/demo)")
    p.add_argument("--ranks", type=int, default=2, help="ranks to start (default 2)")
    p.add_argument("overrides", nargs="*", help="extra tulu-train overrides for the SFT stage, e.g. train.epochs=4")
    args = p.parse_args(argv)

    import torch

    from tulu_mcore.checkpoint.run import resolve_checkpoint
    from tulu_mcore.convert.verify import VerifyArgs, verify
    from tulu_mcore.data.sources import BUILTIN
    from tulu_mcore.metrics.logger import read_metrics

    out = Path(args.out)
    if out.exists():
        _say(f"removing the previous demo run in {out}")
        shutil.rmtree(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sft_dir, dpo_dir, rl_dir = out / "sft", out / "dpo", out / "rlvr"
    judge_dir, onp_dir = out / "judge", out / "dpo_onpolicy"
    clean = _decontaminate(out)
    # 10 passes over the 600 demo conversations: the recipe's 2 are enough for real models, not for
    # a randomly initialised tiny one to learn the answers' format; DPO's and RL's LRs are the largest
    # that still move the held-out score up rather than wreck the model's generation
    sft_args = ["recipe=sft", "model=tiny", f"run.dir={sft_dir}", f"runtime.device={device}", "train.epochs=10",
                f"data.cache_dir={out / 'cache'}", f"data.train={clean['sft']}", *args.overrides]
    judge_args = ["recipe=sft", f"model.init={sft_dir}", f"run.dir={judge_dir}", f"runtime.device={device}",
                  "train.epochs=4", "train.global_batch_size=8", f"data.cache_dir={out / 'cache'}",
                  f"data.train={clean['judge']}"]
    onpolicy = out / "onpolicy"
    synth_args = ["synth", "preferences", f"prompts=[{clean['dpo']}]", "limit=40", f"policy={sft_dir}",
                  f"judge.model={judge_dir}", "judge.template=single", "judge.max_new_tokens=8", "judge.retries=2",
                  "completions_per_model=2", "sampling.max_new_tokens=32", "engine.kind=megatron",
                  f"engine.device={device}", "engine.max_model_len=256", "shard_size=10", f"out={onpolicy}",
                  f"decontam.eval=[{BUILTIN['builtin:rlvr-heldout']}]"]
    onpolicy_args = ["recipe=dpo", f"model.init={sft_dir}", f"run.dir={onp_dir}", f"runtime.device={device}",
                     "train.epochs=2", "optim.lr=1e-4", "train.global_batch_size=8", f"data.cache_dir={out / 'cache'}",
                     f"data.train={onpolicy / 'pairs.jsonl'}"]
    dpo_args = ["recipe=dpo", f"model.init={sft_dir}", f"run.dir={dpo_dir}", f"runtime.device={device}",
                "train.epochs=2", "optim.lr=1e-4", f"data.cache_dir={out / 'cache'}", f"data.train={clean['dpo']}"]
    # one pass over the 320 demo prompts (8 per step, 8 samples each)
    rl_args = ["recipe=rlvr_grpo", f"model.init={dpo_dir}", f"run.dir={rl_dir}", f"runtime.device={device}",
               "train.epochs=1", "optim.lr=6e-4", f"data.train={clean['rlvr']}"]
    sft_s, judge_s, synth_s, onp_s, dpo_s, rl_s = _train(
        [sft_args, judge_args, synth_args, onpolicy_args, dpo_args, rl_args], args.ranks, device, out)

    ckpt = resolve_checkpoint(sft_dir)
    result, ok = verify(VerifyArgs(str(sft_dir / "hf"), str(ckpt), tp=2, device=device))
    _say(f"SFT's HF export vs its final checkpoint at TP2: max_abs_logit_diff={result['max_abs_logit_diff']:.2e} "
         f"({'ok' if ok else 'FAILED'})")

    sft, dpo, rl, odpo = read_metrics(sft_dir), read_metrics(dpo_dir), read_metrics(rl_dir), read_metrics(onp_dir)
    for d, m in ((sft_dir, sft), (dpo_dir, dpo), (rl_dir, rl), (onp_dir, odpo)):
        if not m:
            raise UserError(f"{d}/metrics.jsonl is empty: training logged no step")
    losses = [r["loss"] for r in sft]
    tps = sum(r["tokens"] for r in sft) / sum(r["step_time_s"] for r in sft)
    eff = sum(r["packing_efficiency"] for r in sft) / len(sft)
    _say(f"SFT: {len(sft)} steps in {sft_s:.0f}s (with start-up: {args.ranks} ranks started once for every stage); "
         f"loss per conversation "
         f"{losses[0]:.2f} -> {losses[-1]:.2f} (per token {sft[0]['token_mean_loss']:.3f} -> "
         f"{sft[-1]['token_mean_loss']:.3f})")
    _say(f"SFT loss curve: {sparkline(losses)}")
    _say(f"SFT throughput {tps:,.0f} tokens/s over {args.ranks} ranks; packing efficiency {eff:.1%}")
    onp = json.loads((onpolicy / "report.json").read_text())
    gen, jt = onp["throughput"]["completions-policy"], onp["throughput"]["judge"]
    _say(f"on-policy pairs: {onp['outputs']['pairs']['rows']} pairs from {onp['prompts']} prompts in {synth_s:.0f}s "
         f"(outcomes {onp['outcomes']}); the judge (SFT + {judge_s:.0f}s on the judge lessons): "
         f"{onp['judge_requests']} requests, parse failure "
         f"rate {onp['judge_parse_failure_rate']:.0%} ({onp['judge_recovered_by_retry']} recovered by asking again); "
         f"generation {gen['tokens_per_s']:.0f} tokens/s, judge {jt['prompts_per_s']:.1f} requests/s per rank")
    oq = max(1, len(odpo) // 4)
    oacc = [sum(r["accuracy"] for r in part) / len(part) for part in (odpo[:oq], odpo[-oq:])]
    _say(f"DPO on the on-policy pairs: {len(odpo)} steps in {onp_s:.0f}s; loss {odpo[0]['loss']:.3f} -> "
         f"{odpo[-1]['loss']:.3f}; preference accuracy {oacc[0]:.0%} -> {oacc[1]:.0%} (first vs last quarter)")
    half = max(1, len(dpo) // 4)
    acc = [sum(r["accuracy"] for r in part) / len(part) for part in (dpo[:half], dpo[-half:])]
    margin = [sum(r["margin"] for r in part) / len(part) for part in (dpo[:half], dpo[-half:])]
    _say(f"DPO: {len(dpo)} steps in {dpo_s:.0f}s (with the reference pass); loss "
         f"{dpo[0]['loss']:.3f} -> {dpo[-1]['loss']:.3f}; preference accuracy {acc[0]:.0%} -> {acc[1]:.0%}, "
         f"margin {margin[0]:.2f} -> {margin[1]:.2f} (first vs last quarter of the steps)")
    _say(f"DPO loss curve: {sparkline([r['loss'] for r in dpo])}")
    quarter = max(1, len(rl) // 4)
    rates = {}
    for key in ("verified_rate", "verified_rate_gsm8k", "verified_rate_ifeval"):
        parts = [[r[key] for r in part if key in r] for part in (rl[:quarter], rl[-quarter:])]
        rates[key] = [sum(p) / len(p) if p else 0.0 for p in parts]
    _say(f"RLVR (GRPO): {len(rl)} steps in {rl_s:.0f}s; verified rate of the rollouts "
         f"{rates['verified_rate'][0]:.0%} -> {rates['verified_rate'][1]:.0%} (arithmetic "
         f"{rates['verified_rate_gsm8k'][0]:.0%} -> {rates['verified_rate_gsm8k'][1]:.0%}, constraints "
         f"{rates['verified_rate_ifeval'][0]:.0%} -> {rates['verified_rate_ifeval'][1]:.0%}; first vs last "
         f"quarter of the steps); KL to the DPO model {rl[-1]['kl']:.2f}")
    _say(f"RLVR verified-rate curve: {sparkline([r['verified_rate'] for r in rl])}")
    scores = _evaluate(out, {"SFT": sft_dir, "DPO": dpo_dir, "RLVR": rl_dir, "DPO-onpolicy": onp_dir})
    question = "Mia has 7 apples and gets 5 more. How many apples does Mia have now?"
    answer = generate(rl_dir / "hf", question)
    _say(f"the exported RLVR model, asked {question!r}: {answer!r}")
    _say(f"run directories: {sft_dir}, {dpo_dir}, {rl_dir}, {onp_dir} (metrics.jsonl, checkpoints/, hf/)")
    summary = {
        "export_check": {"max_abs_logit_diff": result["max_abs_logit_diff"], "ok": ok},
        "sft": {"steps": len(sft), "loss_first": losses[0], "loss_last": losses[-1], "tokens_per_s": tps},
        "dpo": {"steps": len(dpo), "accuracy_first_quarter": acc[0], "accuracy_last_quarter": acc[1],
                "margin_first_quarter": margin[0], "margin_last_quarter": margin[1]},
        "rlvr": {"steps": len(rl), **{f"{k}_first_quarter": v[0] for k, v in rates.items()},
                 **{f"{k}_last_quarter": v[1] for k, v in rates.items()}, "kl_last": rl[-1]["kl"]},
        "onpolicy": {"pairs": onp["outputs"]["pairs"]["rows"], "prompts": onp["prompts"], "seconds": synth_s,
                     "dpo_steps": len(odpo), "dpo_loss_first": odpo[0]["loss"], "dpo_loss_last": odpo[-1]["loss"],
                     "dpo_accuracy_first_quarter": oacc[0], "dpo_accuracy_last_quarter": oacc[1],
                     "outcomes": onp["outcomes"], "judge_requests": onp["judge_requests"],
                     "judge_parse_failure_rate": onp["judge_parse_failure_rate"],
                     "decontamination_removed": onp["decontamination"]["pairs"]["removed"]},
        "decontamination": clean["summary"],
        "heldout": scores,
        "answer": answer,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not ok:
        raise SystemExit(1)


def _decontaminate(out: Path) -> dict:
    """tulu-decontam of the built-in training data against the held-out prompts; the filtered copies."""
    from tulu_mcore.data.decontam import decontaminate
    from tulu_mcore.data.sources import BUILTIN

    sources = {"sft": "builtin:sft-demo", "judge": "builtin:judge-demo", "dpo": "builtin:preference-demo",
               "rlvr": "builtin:rlvr-demo"}
    report = decontaminate([str(BUILTIN[s]) for s in sources.values()], [str(BUILTIN["builtin:rlvr-heldout"])],
                           out / "decontam", log=lambda *_: None)
    clean, total, removed = {}, 0, 0
    for stage, src in sources.items():
        f = report.filtered[str(BUILTIN[src])]
        clean[stage] = f["path"]
        total, removed = total + f["rows"], removed + f["removed"]
    contaminated = sum(r["contaminated"] for r in report.rows)
    heldout = report.rows[0]["eval_instances"]
    _say(f"decontamination (Tülu 3's 8-gram rule) of the {total} training rows against the {heldout} "
         f"held-out prompts: {removed} rows removed, {contaminated} of {len(report.rows)} sources contaminated "
         f"(report: {out / 'decontam' / 'report.md'})")
    clean["summary"] = {"training_rows": total, "removed": removed, "contaminated_sources": contaminated}
    return clean


def _evaluate(out: Path, stages: dict[str, Path]) -> dict:
    """tulu-eval of each stage's export on the held-out prompts: a table, eval.md and eval.png."""
    from tulu_mcore.data.sources import BUILTIN
    from tulu_mcore.evaluation import report
    from tulu_mcore.evaluation.harness import Settings, evaluate

    data = out / "heldout"
    (data / "demo").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUILTIN["builtin:rlvr-heldout"], data / "demo" / "test.jsonl")
    recs = [evaluate(str(d / "hf"), Settings(tasks=["demo_tulu"], data=str(data), batch_size=16),
                     out / "eval" / name.lower()) for name, d in stages.items()]
    labels = list(stages)
    kinds = {name: _by_dataset(out / "eval" / name.lower() / "samples_demo_tulu.jsonl") for name in labels}
    text = report.compare_table(recs, labels)
    for ds, label in (("gsm8k", "arithmetic"), ("ifeval", "constraints")):
        text += f"| ({label}) | " + " | ".join(f"{100 * kinds[n][ds]:.1f}" for n in labels) + " |\n"
    (out / "eval.md").write_text(text)
    report.plot(recs, labels, out / "eval.png")
    _say("held-out prompts, per stage (tulu-eval demo_tulu: greedy answers verified; the mean of arithmetic "
         "and constraints):")
    for line in text.splitlines():
        print(f"    {line}", flush=True)
    _say(f"plot: {out / 'eval.png'}; each stage's results: {out / 'eval'}/<stage>/")
    return {name: {"verified": r["scores"]["demo_tulu"]["value"], **kinds[name]} for name, r in zip(labels, recs)}


def _by_dataset(samples: Path) -> dict[str, float]:
    """The verified share per kind of held-out prompt, from tulu-eval's samples."""
    from collections import defaultdict

    by = defaultdict(list)
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        ds, ok = s["verified"]
        by[ds].append(ok)
    return {ds: sum(v) / len(v) for ds, v in by.items()}


def _train(stages: list[list[str]], ranks: int, device: str, out: Path) -> list[float]:
    """The stages' tulu-train runs, one after another in one launch of `ranks` ranks (a process runs
    several recipes: the start-up is paid once); each stage's seconds."""
    from tulu_mcore.runtime.launch import torchrun

    for args in stages:
        cmd = f"tulu-synth {' '.join(args[1:])}" if args[0] == "synth" else f"tulu-train {' '.join(args)}"
        _say(f"{cmd}  ({ranks} ranks, {device})")
    plan = out / "stages.json"
    out.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps(stages))
    proc = torchrun("tulu_mcore.cli.demo", ["--run-stages", str(plan)], nproc=ranks)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return json.loads(plan.with_suffix(".seconds.json").read_text())


def run_stages(plan: Path) -> None:
    """On each rank of the demo's launch: every stage's tulu-train (or tulu-synth: a stage that starts
    with "synth"), in order; rank 0 writes their times."""
    import torch.distributed as dist

    from tulu_mcore.cli.synth import main as synth
    from tulu_mcore.cli.train import main as train

    seconds = []
    for args in json.loads(plan.read_text()):
        t0 = time.time()
        if args[0] == "synth":
            synth(args[1:])
            if dist.is_initialized():
                dist.barrier()  # rank 0 writes the pairs the next stage reads
        else:
            train(args)
        seconds.append(time.time() - t0)
    if not dist.is_initialized() or dist.get_rank() == 0:
        plan.with_suffix(".seconds.json").write_text(json.dumps(seconds))


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--run-stages"]:  # a rank of the launch _train() starts
        cli_errors(run_stages)(Path(sys.argv[2]))
    else:
        main()
