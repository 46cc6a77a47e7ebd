"""Generate the built-in demo data and the tiny tokenizer (deterministic; their outputs are committed).

    python -m tulu_mcore.data.builtin.make_builtin [--out DIR]

* ``sft_demo.jsonl``: conversations written here, not taken from anywhere: arithmetic word problems
  with exact answers (some multi-turn, some with a system message) and instructions whose answers can
  be checked mechanically (repeat, reverse, count, upper-case, list).
* ``preference_demo.jsonl``: preference pairs over new problems of the same kinds: the chosen response
  is the exact answer, the rejected one a plausible wrong answer (off-by-some result, wrong count,
  wrong case). Most rows use the Tülu preference-mixture format (two whole conversations), the rest
  ``prompt`` / ``chosen`` / ``rejected`` strings.
* ``rlvr_demo.jsonl``: prompts with verifiable answers in the RLVR format (``messages``, ``ground_truth``,
  ``dataset``): arithmetic problems (``gsm8k``: the exact number) and instructions with checkable
  constraints (``ifeval``: capital letters, a word repeated N times, no commas).
* ``judge_demo.jsonl``: judge lessons (a demo prompt and response, an aspect, ``Rating: N``) in
  tulu-synth's short judge format; tulu-demo makes its judge by a short SFT of its SFT model on them.
* ``rlvr_heldout.jsonl``: held-out prompts in the same format, with names, items and words no training
  row uses (tulu-demo decontaminates the training data against them and scores each stage on them).
* ``tiny_tokenizer/``: a byte-level BPE with 512 entries trained on that data (the `tiny` model's
  vocabulary), with ``<|begin_of_text|>`` / ``<|end_of_text|>`` like the Llama 3 tokenizer. The Tülu
  role markers stay plain text, as in the recipe.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ["Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Lena", "Ravi", "Ines", "Kofi", "Yuki", "Sara"]
ITEMS = ["apples", "books", "stickers", "marbles", "coins", "pencils", "shells", "cards", "stamps", "eggs"]
WORDS = ["river", "cloud", "lemon", "piano", "tiger", "maple", "orbit", "candle", "silver", "garden"]
SYSTEMS = ["You are a helpful assistant.", "You are a careful math tutor. Show the calculation.",
           "Answer briefly and exactly."]


def arithmetic(rng: random.Random, names=NAMES, items=ITEMS) -> dict:
    name, item = rng.choice(names), rng.choice(items)
    a, b = rng.randint(2, 40), rng.randint(2, 30)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        ans, expr = a + b, f"{a} + {b}"
    elif kind == "sub":
        a = a + b
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        ans, expr = a - b, f"{a} - {b}"
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
        ans, expr = a * b, f"{a} * {b}"
    messages = [{"role": "user", "content": q},
                {"role": "assistant", "content": f"{expr} = {ans}. The answer is {ans}."}]
    if rng.random() < 0.3:  # a follow-up turn: the first assistant turn is then not the last
        c = rng.randint(1, 9)
        messages += [{"role": "user", "content": f"And if {name} then gets {c} more?"},
                     {"role": "assistant", "content": f"{ans} + {c} = {ans + c}. The answer is {ans + c}."}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
    return {"messages": messages}


def instruction(rng: random.Random) -> dict:
    w = rng.choice(WORDS)
    n = rng.randint(2, 5)
    kind = rng.choice(["repeat", "reverse", "upper", "count", "list"])
    if kind == "repeat":
        q, a = f"Write the word '{w}' {n} times, separated by commas.", ", ".join([w] * n)
    elif kind == "reverse":
        q, a = f"Spell the word '{w}' backwards.", w[::-1]
    elif kind == "upper":
        q, a = f"Write '{w}' in capital letters and nothing else.", w.upper()
    elif kind == "count":
        q, a = f"How many letters are in the word '{w}'?", f"The word '{w}' has {len(w)} letters."
    else:
        q, a = f"List the first {n} even numbers.", ", ".join(str(2 * i) for i in range(1, n + 1))
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if rng.random() < 0.2:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
    return {"messages": messages}


def demo_conversations(n: int = 480, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [arithmetic(rng) if rng.random() < 0.6 else instruction(rng) for _ in range(n)]


def _wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong version of a demo answer: every number shifted, or the text altered."""
    import re

    if re.search(r"\d", answer):
        shift = rng.choice([-3, -2, -1, 1, 2, 3, 10])
        last = re.findall(r"\d+", answer)[-1]
        wrong = str(int(last) + shift if int(last) + shift >= 0 else int(last) + 1)
        # the stated result and the final answer both change; the calculation stays
        return re.sub(rf"\b{last}\b(?=\.?$)|(?<== ){last}\b", wrong, answer)
    if answer.isupper():
        return answer.lower()
    if ", " in answer:
        return ", ".join(answer.split(", ")[:-1]) or answer[::-1] + "s"
    return answer[::-1] if answer[::-1] != answer else answer + "s"


def preference_pairs(n: int = 256, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        conv = arithmetic(rng) if rng.random() < 0.6 else instruction(rng)
        msgs = conv["messages"]
        good = msgs[-1]["content"]
        bad = _wrong(good, rng)
        if bad == good:
            continue
        if rng.random() < 0.8:
            rows.append({"chosen": msgs, "rejected": msgs[:-1] + [{"role": "assistant", "content": bad}]})
        elif len(msgs) == 2:
            rows.append({"prompt": msgs[0]["content"], "chosen": good, "rejected": bad})
    return rows


def rlvr_prompts(n: int = 256, seed: int = 2, names=NAMES, items=ITEMS, words=WORDS,
                 kinds=("upper", "repeat", "commas")) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        if rng.random() < 0.6:
            conv = arithmetic(rng, names, items)["messages"]
            prompt = [m for m in conv if m["role"] != "assistant"][:2 if conv[0]["role"] == "system" else 1]
            answer = conv[len(prompt)]["content"].rsplit(" ", 1)[-1].rstrip(".")
            rows.append({"messages": prompt, "ground_truth": answer, "dataset": "gsm8k"})
            continue
        w, k = rng.choice(words), rng.randint(2, 5)
        kind = rng.choice(kinds)
        if kind == "upper":
            q, truth = f"Write '{w}' in capital letters and nothing else.", {"func_name": "validate_uppercase"}
        elif kind == "repeat":
            q = f"Write the word '{w}' {k} times, separated by commas."
            truth = {"func_name": "verify_keyword_frequency", "word": w, "N": k}
        else:
            q = f"List the first {k} even numbers without using any commas."
            truth = {"func_name": "validate_no_commas"}
        rows.append({"messages": [{"role": "user", "content": q}], "ground_truth": json.dumps(truth),
                     "dataset": "ifeval"})
    return rows


# Response formats a prompt can ask for, checked whatever the content (IFEval-style constraints: the
# closing phrase); each request is shorter than the 8-gram of Tülu's decontamination rule, so sharing it
# is no overlap.
FORMATS = {
    "end": ("End with 'Any other questions?'", lambda a: f"{a} Any other questions?",
            {"func_name": "validate_end", "end_phrase": "Any other questions?"}),
    "thanks": ("End with 'Hope this helps.'", lambda a: f"{a} Hope this helps.",
               {"func_name": "validate_end", "end_phrase": "Hope this helps."}),
}
# held-out questions: asked in words no training prompt uses
HELDOUT_QUESTIONS = ["Give one word that rhymes with '{w}'.", "Use the word '{w}' in a short sentence.",
                     "What does the word '{w}' mean?", "Is '{w}' a noun or a verb?"]


def formatted(rng: random.Random) -> dict:
    """An instruction of the demo's kinds with a response format asked for, answered in that format."""
    msgs = [m for m in instruction(rng)["messages"] if m["role"] != "system"]
    kind = rng.choice(sorted(FORMATS))
    request, render, truth = FORMATS[kind]
    return {"messages": [{"role": "user", "content": f"{msgs[0]['content']} {request}"},
                         {"role": "assistant", "content": render(msgs[1]["content"])}], "truth": truth,
            "plain": msgs[1]["content"]}


def formatted_conversations(n: int = 120, seed: int = 10) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": formatted(rng)["messages"]} for _ in range(n)]


def formatted_pairs(n: int = 64, seed: int = 11) -> list[dict]:
    """The asked format preferred over the same answer without it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        f = formatted(rng)
        prompt = f["messages"][:1]
        rows.append({"chosen": f["messages"], "rejected": prompt + [{"role": "assistant", "content": f["plain"]}]})
    return rows


def formatted_prompts(n: int = 64, seed: int = 12) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        f = formatted(rng)
        rows.append({"messages": f["messages"][:1], "ground_truth": json.dumps(f["truth"]), "dataset": "ifeval"})
    return rows


def heldout_prompts(n: int = 64, seed: int = 3) -> list[dict]:
    """The demo's held-out prompts: half arithmetic (new problems of the training templates), half new
    questions asking for one of the trained response formats; tulu-demo removes the training rows that
    overlap them by Tülu 3's rule before training."""
    rng = random.Random(seed)
    rows = [r for r in rlvr_prompts(4 * n, seed) if r["dataset"] == "gsm8k"][:n // 2]
    while len(rows) < n:
        question = rng.choice(HELDOUT_QUESTIONS).format(w=rng.choice(WORDS))
        request, _, truth = FORMATS[rng.choice(sorted(FORMATS))]
        rows.append({"messages": [{"role": "user", "content": f"{question} {request}"}],
                     "ground_truth": json.dumps(truth), "dataset": "ifeval"})
    return rows


# tulu-synth's short judge prompt (judge.template=single; tulu_mcore/synth/judge.py, whose tests check
# that these rows use it verbatim)
JUDGE_ASPECTS = {"helpfulness": "helpfulness", "instruction_following": "instruction following", "honesty": "honesty",
                 "truthfulness": "truthfulness"}


def judge_prompt(aspect: str, instruction: str, response: str) -> str:
    na = ", or N/A for creative writing" if aspect == "honesty" else ""
    return (f"Rate the response's {JUDGE_ASPECTS[aspect]}: 1 (worst) to 5 (best){na}; reply \"Rating: N\".\n"
            f"Instruction: {instruction}\nResponse: {response}")


def judge_conversations(n: int = 64, seed: int = 20) -> list[dict]:
    """The demo's judge lessons: a demo prompt, a response (the exact answer, or a wrong one, or the
    answer without the asked format), one aspect, and the rating: 4-5 for the exact answer, 1-2
    otherwise. A short SFT on them teaches the tiny SFT model the judge's answer format: tulu-demo's
    judge for its on-policy pairs."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        kind = rng.random()
        if kind < 0.3:
            f = formatted(rng)
            prompt, good, poor = f["messages"][0]["content"], f["messages"][1]["content"], f["plain"]
        else:
            conv = arithmetic(rng) if kind < 0.7 else instruction(rng)
            msgs = [m for m in conv["messages"] if m["role"] != "system"][-2:]
            prompt, good = msgs[0]["content"], msgs[1]["content"]
            poor = _wrong(good, rng)
        if poor == good:
            continue
        right = rng.random() < 0.5
        aspect = rng.choice(sorted(JUDGE_ASPECTS))
        rating = rng.choice([4, 5]) if right else rng.choice([1, 2])
        response = good if right else poor
        rows.append({"messages": [{"role": "user", "content": judge_prompt(aspect, prompt, response)},
                                  {"role": "assistant", "content": f"Rating: {rating}"}],
                     "aspect": aspect, "instruction": prompt, "response": response})
    return rows


def train_tokenizer(texts: list[str], out: Path, vocab_size: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", model_max_length=131072)
    fast.save_pretrained(out)
    # name the class transformers 4 and 5 both know (5 would write its own "TokenizersBackend")
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    out = Path(args.out)
    convs = demo_conversations()
    with open(out / "sft_demo.jsonl", "w") as f:
        for c in convs + formatted_conversations():
            f.write(json.dumps(c) + "\n")
    with open(out / "preference_demo.jsonl", "w") as f:
        for row in preference_pairs() + formatted_pairs():
            f.write(json.dumps(row) + "\n")
    with open(out / "rlvr_demo.jsonl", "w") as f:
        for row in rlvr_prompts() + formatted_prompts():
            f.write(json.dumps(row) + "\n")
    with open(out / "judge_demo.jsonl", "w") as f:
        for row in judge_conversations():
            f.write(json.dumps(row) + "\n")
    with open(out / "rlvr_heldout.jsonl", "w") as f:
        for row in heldout_prompts():
            f.write(json.dumps(row) + "\n")
    markers = "<|system|>\n<|user|>\n<|assistant|>\n"
    texts = [markers + "\n".join(m["content"] for m in c["messages"]) for c in convs]  # (the first 480 rows)
    train_tokenizer(texts, out / "tiny_tokenizer")


if __name__ == "__main__":
    main()
