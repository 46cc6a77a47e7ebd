"""The Tülu 3 evaluation suites as task lists, and the Tülu 3 model cards' numbers to read ours against.

A preset names the ``*_tulu`` tasks it runs and the benchmarks it does not run here, each with the
reason (LLM-judge and classifier suites need a hosted judge or their own harness): a results table lists
them, never silently drops them.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # Tülu 3's development suite (OLMES ids in each task file; the release's oe-eval.sh list)
    "tulu3_dev": {
        "tasks": ["mmlu_cot_tulu", "mmlu_mc_tulu", "popqa_tulu", "truthfulqa_mc2_tulu", "bbh_cot_tulu", "drop_tulu",
                  "minerva_math_tulu", "gsm8k_tulu", "humaneval_tulu", "humanevalplus_tulu", "ifeval_tulu"],
        "not_run": {
            "alpaca_eval_v2": "length-controlled win rate judged by GPT-4 (the alpaca-eval package and an "
                              "OpenAI key); outside this harness",
            "safety": "six safety suites scored by the WildGuard classifier (AllenAI's safety-eval); outside "
                      "this harness",
        },
    },
    # the unseen suite, kept for the end (P Table 33)
    "tulu3_unseen": {
        "tasks": ["mmlu_pro_tulu", "gpqa_tulu", "agieval_en_tulu", "deepmind_math_tulu", "bigcodebench_hard_tulu"],
        "not_run": {
            "ifeval_ood": "IFBench's new constraints have their own checkers (allenai/IFBench); not in this "
                          "harness",
            "href": "win rate judged by an LLM (allenai/href); outside this harness",
        },
    },
    # the main job's own held-out prompts (tulu-demo)
    "demo": {"tasks": ["demo_tulu"], "not_run": {}},
}

# Model-card numbers (HF model cards of allenai/Llama-3.1-Tulu-3-{8B,70B,405B}, percent), by task;
# per size the SFT, DPO and final (RLVR) models. 405B's card used other shot counts for some tasks
# (MMLU 5-shot CoT, PopQA 3-shot, BBH 0-shot CoT) and has no TruthfulQA / DROP rows.
REFERENCE = {
    "8B": {
        "mmlu_cot_tulu": (65.9, 68.7, 68.2), "popqa_tulu": (29.3, 29.3, 29.1),
        "truthfulqa_mc2_tulu": (46.8, 56.1, 55.0), "bbh_cot_tulu": (67.9, 65.8, 66.0),
        "drop_tulu": (61.3, 62.5, 62.6), "minerva_math_tulu": (31.5, 42.0, 43.7), "gsm8k_tulu": (76.2, 84.3, 87.6),
        "humaneval_tulu": (86.2, 83.9, 83.9), "humanevalplus_tulu": (81.4, 78.6, 79.2),
        "ifeval_tulu": (72.8, 81.1, 82.4),
    },
    "70B": {
        "mmlu_cot_tulu": (78.9, 83.3, 83.1), "popqa_tulu": (48.6, 46.3, 46.5),
        "truthfulqa_mc2_tulu": (55.7, 67.9, 67.6), "bbh_cot_tulu": (82.7, 81.8, 82.0),
        "drop_tulu": (77.2, 74.1, 74.3), "minerva_math_tulu": (53.7, 62.3, 63.0), "gsm8k_tulu": (91.1, 93.5, 93.5),
        "humaneval_tulu": (92.9, 92.4, 92.4), "humanevalplus_tulu": (87.3, 88.4, 88.0),
        "ifeval_tulu": (82.1, 82.6, 83.2),
    },
    "405B": {
        "mmlu_cot_tulu": (84.4, 86.6, 87.0), "popqa_tulu": (55.7, 55.4, 55.5), "bbh_cot_tulu": (88.0, 88.8, 88.6),
        "minerva_math_tulu": (63.4, 59.9, 67.3), "gsm8k_tulu": (93.6, 94.2, 95.5),
        "humaneval_tulu": (95.7, 97.2, 95.9), "humanevalplus_tulu": (93.3, 93.9, 92.9),
        "ifeval_tulu": (82.4, 85.0, 86.0),
    },
}
# the Llama 3.1 shapes (hidden size, layers) of the Tülu 3 sizes
SIZES = {(4096, 32): "8B", (8192, 80): "70B", (16384, 126): "405B"}


def expand(spec: str) -> tuple[list[str], dict[str, str]]:
    """`tasks=` as given: presets and task names, comma-separated -> (tasks in order, not-run reasons)."""
    tasks, not_run = [], {}
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name in PRESETS:
            tasks += PRESETS[name]["tasks"]
            not_run.update(PRESETS[name]["not_run"])
        else:
            tasks.append(name)
    return list(dict.fromkeys(tasks)), not_run


def size_of(config: dict) -> str | None:
    """The Tülu 3 size whose Llama 3.1 shape an HF config.json has, else None."""
    return SIZES.get((config.get("hidden_size"), config.get("num_hidden_layers")))
