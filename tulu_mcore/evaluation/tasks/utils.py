"""The functions the ``*_tulu`` task files name (``!function utils.…``): data, prompts, scoring.

lm-eval imports this file by path; everything of substance lives in :mod:`tulu_mcore.evaluation`.
"""

from __future__ import annotations

import string

from lm_eval.api.samplers import ContextSampler

from tulu_mcore.evaluation import scoring
from tulu_mcore.evaluation.benchmarks import field
from tulu_mcore.evaluation.benchmarks import load as dataset  # noqa: F401  (custom_dataset)
from tulu_mcore.evaluation.scoring import macro_mean  # noqa: F401  (aggregation)

LETTERS = string.ascii_uppercase


# --- documents ------------------------------------------------------------------------------------

def eval_docs(ds):
    return ds.filter(lambda d: not d["_fewshot"])


def fewshot_docs(ds):
    return ds.filter(lambda d: d["_fewshot"])


class SubjectSampler(ContextSampler):
    """The first n few-shot rows of the evaluated row's subject (MMLU's dev rows of that subject, BBH's
    exemplars of that task); all few-shot rows when they carry no subject (GSM8K's, Minerva's)."""

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        pool = list(df or self.df)
        if any(d.get("subject") for d in pool):
            subject = (eval_doc or {}).get("subject")
            pool = [d for d in pool if d.get("subject") == subject]
        if len(pool) < n:
            raise ValueError(f"{n}-shot needs {n} few-shot rows for subject "
                             f"{(eval_doc or {}).get('subject')!r}; the data has {len(pool)}")
        return pool[:n]


def keep_all(resps, docs):
    """Keeps every sample of a repeated generation (pass@k scores all of them)."""
    return resps


# --- prompts --------------------------------------------------------------------------------------

def gsm8k_text(doc):
    return f"Question: {doc['question']}\nAnswer:"


def gsm8k_fewshot_target(doc):
    return doc["solution"]


def math_text(doc):
    return f"Problem:\n{doc['problem']}\n\nSolution:"


def math_fewshot_target(doc):
    return doc["solution"]


def bbh_text(doc):
    return f"Q: {doc['input']}\nA: Let's think step by step."


def drop_text(doc):
    return f"Passage: {doc['passage']}\nQuestion: {doc['question']}\nAnswer:"


def drop_target(doc):
    return " " + ", ".join(field(doc, "answers")[0])


def popqa_text(doc):
    return f"Q: {doc['question']} A:"


def popqa_target(doc):
    return field(doc, "possible_answers")[0]


def truthfulqa_text(doc):
    return f"Q: {doc['question']}\nA:"


def truthfulqa_choices(doc):
    return field(doc, "mc2_targets")["choices"] or [doc["answer"]]


def truthfulqa_fewshot_target(doc):
    return doc["answer"]


def _options(choices, style):
    return "\n".join(style.format(LETTERS[i], c) for i, c in enumerate(choices))


def mmlu_mc_text(doc):
    subject = doc["subject"].replace("_", " ")
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{doc['question'].strip()}\n{_options(field(doc, 'choices'), '{}. {}')}\nAnswer:")


def mmlu_mc_choices(doc):
    return list(LETTERS[:len(field(doc, "choices"))])


def mmlu_mc_target(doc):
    return int(doc["answer"])


def mmlu_cot_text(doc):
    subject = doc["subject"].replace("_", " ")
    return (f"The following is a multiple choice question about {subject}. Summarize your reasoning concisely, "
            f"then conclude with 'Therefore, the answer is: X' where X is one of A, B, C, or D.\n\n"
            f"Question: {doc['question'].strip()}\n{_options(field(doc, 'choices'), '({}) {}')}")


def _zero_shot_cot(question, choices):
    letters = ", ".join(LETTERS[:len(choices)])
    return (f"Answer the following multiple choice question. Think step by step, then conclude with "
            f"'Therefore, the answer is (X)' where X is one of {letters}.\n\n"
            f"Question: {question.strip()}\n{_options(choices, '({}) {}')}")


def mmlu_pro_text(doc):
    return _zero_shot_cot(doc["question"], field(doc, "options"))


def gpqa_text(doc):
    return _zero_shot_cot(doc["question"], field(doc, "choices"))


def agieval_text(doc):
    return _zero_shot_cot(doc["question"], field(doc, "choices"))


def deepmind_math_text(doc):
    return ("Solve the following math problem step by step. The last line of your response should be "
            "'Therefore, the final answer is $ANSWER. I hope it is correct.' where $ANSWER is the answer.\n\n"
            f"{doc['question'].strip()}")


def humaneval_text(doc):
    return f"Complete the following python function.\n\n\n{doc['prompt']}"


def bigcodebench_text(doc):
    return doc["instruct_prompt"]


def demo_text(doc):
    return [m for m in field(doc, "messages") if m["role"] == "user"][-1]["content"]


# --- scoring --------------------------------------------------------------------------------------

def gsm8k_results(doc, results):
    return {"exact_match": int(scoring.gsm8k_correct(results[0], doc["answer"]))}


def math_results(doc, results):
    return {"exact_match": (doc["subject"], int(scoring.math_correct(results[0], doc["answer"])))}


def bbh_results(doc, results):
    return {"exact_match": int(scoring.bbh_correct(results[0], doc["target"]))}


def drop_results(doc, results):
    from lm_eval.tasks.drop.utils import process_results

    answer = results[0].strip().split("\n")[0]
    return process_results({"answers": [tuple(a) for a in field(doc, "answers")]}, [answer])


def popqa_results(doc, results):
    return {"exact_match": int(scoring.popqa_correct(results[0], field(doc, "possible_answers")))}


def truthfulqa_results(doc, results):
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    return {"mc2": process_results_mc2({"mc2_targets": field(doc, "mc2_targets")}, results)["acc"]}


def mmlu_mc_results(doc, results):
    lls = [ll for ll, _ in results]
    return {"acc": (doc["subject"], int(max(range(len(lls)), key=lls.__getitem__) == int(doc["answer"])))}


def _letter_results(doc, response, answer_index):
    return {"exact_match": (doc.get("subject") or "", int(scoring.letter(response) == LETTERS[answer_index]))}


def mmlu_cot_results(doc, results):
    return _letter_results(doc, results[0], int(doc["answer"]))


def mmlu_pro_results(doc, results):
    return _letter_results(doc, results[0], LETTERS.index(str(doc["answer"]).strip()))


def gpqa_results(doc, results):  # one set: a plain mean
    return {"exact_match": int(scoring.letter(results[0]) == LETTERS[int(doc["answer"])])}


def agieval_results(doc, results):
    return _letter_results(doc, results[0], int(doc["answer"]))


def deepmind_math_results(doc, results):
    return {"exact_match": (doc["subject"], int(scoring.deepmind_math_correct(results[0], doc["answer"])))}


def humaneval_results(doc, results):
    from tulu_mcore.evaluation.sandbox import passes

    samples = results[0]  # the doc's one request: its repeats, every one kept (filter keep_all)
    program = lambda completion: (f"{doc['prompt']}\n{scoring.code_completion(completion)}\n\n{doc['test']}\n"  # noqa: E731
                                  f"check({doc['entry_point']})\n")
    c = sum(passes(program(s)) for s in samples)
    return {f"pass@{k}": scoring.pass_at_k(len(samples), c, k) for k in (1, 10) if k <= len(samples)}


# BigCodeBench's check: the answer's code, then the task's tests; every TestCases test must pass
_RUN_TESTCASES = ("\n\nif __name__ == '__main__':\n    import sys as _sys, unittest as _unittest\n"
                  "    _r = _unittest.TextTestRunner(verbosity=0).run(\n"
                  "        _unittest.defaultTestLoader.loadTestsFromTestCase(TestCases))\n"
                  "    _sys.exit(0 if _r.wasSuccessful() else 1)\n")


def bigcodebench_results(doc, results):
    from tulu_mcore.evaluation.sandbox import passes

    program = f"{scoring.fenced_code(results[0])}\n{doc['test']}{_RUN_TESTCASES}"
    return {"pass@1": int(passes(program, timeout_s=60.0))}


def demo_results(doc, results):
    from tulu_mcore.rewards import verify

    return {"verified": (doc["dataset"], int(verify(doc["dataset"], results[0], doc["ground_truth"])))}


def ifeval_results(doc, results):
    from lm_eval.tasks.ifeval.utils import process_results

    return process_results({"key": doc["key"], "prompt": doc["prompt"],
                            "instruction_id_list": field(doc, "instruction_id_list"),
                            "kwargs": field(doc, "kwargs")}, results)


def flat_mean(items):
    """Instruction-level accuracy: the mean over every instruction of every prompt."""
    flat = [x for item in items for x in item]
    return sum(flat) / len(flat) if flat else float("nan")
