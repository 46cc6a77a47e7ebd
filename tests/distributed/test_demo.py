"""The main job, `tulu-demo` (the README's first command): decontamination, SFT -> DPO -> RLVR on the
built-in tiny default, and tulu-eval of every stage on held-out prompts; each stage does what it is for."""

import json


def test_demo_pipeline_learns_at_every_stage(demo_runs):
    s = json.loads((demo_runs / "summary.json").read_text())
    assert s["export_check"]["ok"]
    assert s["sft"]["loss_last"] < 0.5 * s["sft"]["loss_first"]
    assert s["dpo"]["accuracy_last_quarter"] > s["dpo"]["accuracy_first_quarter"] + 0.2
    r = s["rlvr"]
    # GRPO on the bundled verifiable prompts: the verified rate of the rollouts rises
    assert r["verified_rate_last_quarter"] > r["verified_rate_first_quarter"], r
    assert 0 < r["kl_last"] < 10
    out = (demo_runs / "stdout.txt").read_text()
    assert f"RLVR (GRPO): {r['steps']} steps" in out and "the exported RLVR model, asked" in out


def test_demo_makes_on_policy_pairs_judged_by_its_sft_model_and_trains_dpo_on_them(demo_runs):
    """tulu-synth preferences on the megatron engine inside the demo's launch: two completions of each
    prompt from the SFT checkpoint, rated by the judge (the SFT model taught the judge's answer format by
    the built-in lessons), binarized; DPO on those pairs learns them."""
    s = json.loads((demo_runs / "summary.json").read_text())["onpolicy"]
    rep = json.loads((demo_runs / "onpolicy" / "report.json").read_text())
    pairs = [json.loads(line) for line in (demo_runs / "onpolicy" / "pairs.jsonl").read_text().splitlines()]
    assert rep["engine"] == "megatron" and rep["prompts"] == s["prompts"] == 40
    assert len(pairs) == s["pairs"] == rep["outcomes"]["pair"] >= 10, rep["outcomes"]
    # every judged prompt is accounted for: a pair, or the reason it has none
    assert sum(rep["outcomes"].values()) == 40 and rep["judge_parse_failure_rate"] < 0.3, rep
    assert rep["judge_requests"] >= 4 * 2 * (40 - rep["outcomes"].get("fewer_than_two_completions", 0))
    for p in pairs:
        assert p["chosen_model"] == p["rejected_model"] == "policy" and p["chosen_rating"] > p["rejected_rating"]
        assert p["chosen"][:-1] == p["rejected"][:-1] and p["chosen"][-1] != p["rejected"][-1]
    shards = sorted(x.name for x in (demo_runs / "onpolicy" / "ratings").glob("shard-*.jsonl"))
    assert shards == [f"shard-{k:05d}.jsonl" for k in range(4)]  # 40 prompts, shard_size=10, both ranks
    assert s["dpo_loss_last"] < s["dpo_loss_first"] and s["dpo_accuracy_last_quarter"] > s["dpo_accuracy_first_quarter"]
    out = (demo_runs / "stdout.txt").read_text()
    assert f"data.train={demo_runs / 'onpolicy' / 'pairs.jsonl'}" in out and "DPO on the on-policy pairs" in out


def test_demo_decontaminates_then_scores_every_stage_on_held_out_prompts(demo_runs):
    s = json.loads((demo_runs / "summary.json").read_text())
    d = s["decontamination"]
    report = json.loads((demo_runs / "decontam" / "report.json").read_text())
    assert d["removed"] == sum(f["removed"] for f in report["filtered"].values()) > 0
    assert d["training_rows"] == sum(f["rows"] for f in report["filtered"].values())
    # every stage trained on the filtered copies
    out = (demo_runs / "stdout.txt").read_text()
    for name in ("sft_demo.jsonl", "judge_demo.jsonl", "preference_demo.jsonl", "rlvr_demo.jsonl"):
        assert f"data.train={demo_runs / 'decontam' / name}" in out
    h = s["heldout"]
    # the stages move the held-out score: the trained response formats generalise to new questions
    assert h["SFT"]["verified"] < h["DPO"]["verified"] < h["RLVR"]["verified"], h
    assert h["RLVR"]["ifeval"] > 0.5, h
    for stage in ("sft", "dpo", "rlvr"):
        rec = json.loads((demo_runs / "eval" / stage / "results.json").read_text())
        assert rec["scores"]["demo_tulu"]["n"] == 64 and rec["settings"]["backend"] == "hf"
        assert rec["scores"]["demo_tulu"]["value"] == h[stage.upper()]["verified"]
    table = (demo_runs / "eval.md").read_text()
    assert table.startswith("| task | SFT | DPO | RLVR | DPO-onpolicy |") and "(constraints)" in table
    assert (demo_runs / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tulu_eval_exports_a_checkpoint_first_and_compares_stages(demo_runs, tmp_path, capsys):
    """tulu-eval on the RLVR run's final checkpoint (exported first) answers as the demo's evaluation of
    the run's own export did; `compare` puts the three stages side by side."""
    import subprocess
    import sys

    from tulu_mcore.checkpoint.run import resolve_checkpoint

    ckpt = resolve_checkpoint(demo_runs / "rlvr")
    out = tmp_path / "ev"
    proc = subprocess.run([sys.executable, "-m", "tulu_mcore.cli.eval", str(ckpt), "tasks=demo", f"out={out}",
                           f"data={demo_runs / 'heldout'}", "limit=6"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "hf" / "config.json").is_file() and (out / "results.png").is_file()
    assert "| demo_tulu |  | verified |" in proc.stdout and "written:" in proc.stdout
    rec = json.loads((out / "results.json").read_text())
    assert rec["model"] == str(ckpt) and rec["settings"]["limit"] == 6 and rec["scores"]["demo_tulu"]["n"] == 6
    assert rec["lm_eval"][0]["configs"]["demo_tulu"]["generation_kwargs"]["max_gen_toks"] == 32

    def responses(d):
        return [json.loads(line)["resps"][0][0] for line in (d / "samples_demo_tulu.jsonl").read_text().splitlines()]

    assert responses(out) == responses(demo_runs / "eval" / "rlvr")[:6]

    from tulu_mcore.cli.eval import main

    ev = demo_runs / "eval"
    main(["compare", str(ev / "sft"), str(ev / "dpo"), str(ev / "rlvr"), "labels=SFT,DPO,RLVR", f"out={tmp_path / 'cmp'}"])
    assert capsys.readouterr().out.startswith("| task | SFT | DPO | RLVR |")
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare.md").is_file()
