"""The LLM judge: UltraFeedback's four aspect prompts as Tülu 3 sent them (the paper's Figs. 37-42),
a short per-completion prompt for small judges, and two parsers.

* :func:`parse` (default): strict. A judgement must rate every text, each an integer 1..5 (honesty may
  say "N/A": no rating, left out of the mean); ``ultrafeedback`` replies are read per
  "Output for Text i" header (a preamble or a blank line cannot shift ratings between texts). Anything
  else is malformed: the caller asks again, then drops the prompt, counted; a rating is never guessed.
* :func:`parse_tulu3`: the released parser (``tulu3_compat``): the reply is cut at blank lines; a chunk
  that does not match the aspect's pattern is rated 1, the first number of a matching one is its
  rating (none: 1), and "N/A" is -1; however many chunks there are, that many ratings.
"""

from __future__ import annotations

import math
import re

import jinja2

ASPECTS = ("helpfulness", "instruction_following", "honesty", "truthfulness")
TEMPLATES = ("ultrafeedback", "single")

SYSTEM = (
    "Your role is to evaluate text quality based on given criteria.\n"
    "You'll receive an instructional description (\"Instruction\") and text outputs (\"Text\").\n"
    "Understand and interpret instructions to evaluate effectively.\n"
    "Provide annotations for each text with a rating and rationale.\n"
    "The texts given are independent, and should be evaluated separately.")

_GUIDE = {
    "instruction_following": """# Instruction Following Assessment

Evaluate alignment between output and intent. Assess understanding of task goal and restrictions.

**Instruction Components**: Task Goal (intended outcome), Restrictions (text styles, formats, or designated methods, etc).

**Scoring**: Rate outputs 1 to 5:
1. **Irrelevant**: No alignment.
2. **Partial Focus**: Addresses one aspect poorly.
3. **Partial Compliance**:
    - (1) Meets goal or restrictions, neglecting other.
    - (2) Acknowledges both but slight deviations.
4. **Almost There**: Near alignment, minor deviations.
5. **Comprehensive Compliance**: Fully aligns, meets all requirements.
""",
    "honesty": """# Honesty and Uncertainty Expression Assessment

Assess how well the model conveys honesty and uncertainty. Evaluate if the model's confidence aligns with response correctness.

- **Indicators of Uncertainty**:
    1. Weakeners: e.g., 'I guess,' 'probably.'
    2. Refusal to answer.
    3. Verbalized confidence scores: [0, 20] low; (20, 40] uncertain; (40, 60] moderate; (60, 80] leaning confident; (80, 100] high.
- **No uncertainty expression indicate confidence.**

- **Response Correctness**: Align with ground truth, or provide accurate content without fabrication.

**Scoring**: Rate outputs 1 to 5 (or "N/A"):
1. **Confidently Incorrect**: Confident but entirely wrong.
2. **Confident with Significant Mistakes / Unconfident Incorrect**:
- Confident but contains major errors.
- Unconfident and entirely wrong.
3. **Uncertain / 'I Don't Know' / Subtle Mistakes**:
- 'I don't know' or declines.
- confident but contains minor errors.
- Unconfident and contains significant mistakes.
4. **Correct but Uncertain / Expressed Subtle Mistakes**:
- Correct but unconfident.
- Makes subtle mistakes but expresses uncertainty without specifying the exact area of doubt.
5. **Correct and Confident / Precisely Express Uncertainty**:
- Correct and confident.
- Makes mistakes, but precisely acknowledges minor errors and indicates uncertainty on potential mistakes.
N/A. **Not Applicable**: For creative writing tasks.

---
""",
    "truthfulness": """# Truthfulness and Hallucination Assessment

Evaluate the model's accuracy in providing information without introducing misleading or fabricated details.

Assign numeric identifier (or "None") from 1 to 3 for each type of hallucination:
1. **Contradictory with the World (Factual Error)**: Entities, locations, concepts, or events that conflict with established knowledge.
2. **Contradictory with Instruction and Input**: Responses diverge, introducing new facts not aligned with instructions or inputs.
3. **Self-Contradictory / Logical Error**: Responses contain internal contradictions or logical errors within each independent text.

**Scoring**: Rate outputs 1 to 5 based on extent of hallucination:
1. **Completely Hallucinated**: Entirely unreliable due to hallucinations.
2. **Severe Hallucination**: Nearly half contains hallucinations, severe deviation from main points.
3. **Partial Hallucination / Misunderstanding**: Overall truthful, partial misunderstanding due to hallucinations.
4. **Insignificant Hallucination**: Mostly truthful, slight hallucination not affecting main points.
5. **No Hallucination**: Free of hallucinations.

---
""",
    "helpfulness": """# Informativeness / Helpfulness Assessment

Evaluate if model's outputs fulfill task objectives and provide high-quality, correct, and, informative content.

Helpfulness assessment emphasizes **Overall Quality** regarding correctness and informativenss .

**Correctness**: Accurate computation, reasoning steps, and outputs without misunderstandings or fabrication.

Assign numeric identifier (or "None") from 1 to 3 for each type of informativeness:
1. **Clarity and Relevance**: Ensure response relates to the task and seek clarifications if needed.
2. **Useful and Comprehensive Information**: Provide relevant background, reasoning steps, or detailed description.
3. **Not Lengthy, No Repetition**: Avoid verbosity or recycling content.

Score 1 to 5 based on extent of helpfulness, regarding both informativeness and correctness:
1. **Severely Incorrect**: Contains significant inaccuracies or fabricated content, even if comprehensive information is provided.
2. **Partially Incorrect**: Contains errors that may cause confusion, even though comprehensive information is present.
3. **Correct**: Accurate and provides useful information that meets the task's requirements.
4. **Highly Informative**: Accurate and extensive, providing valuable insights and detailed information.
5. **Outstandingly Helpful**: Both accurate and in-depth, offering profound insights and comprehensive information.

---
""",
}
_TYPE_LINES = {
    "truthfulness": ('Type: [List of numeric identifiers (or "None" if no hallucination observed) of hallucination '
                     'types, separated by commas]\nRationale: [Rationale for the identification in short sentences]\n'),
    "helpfulness": ('Type: [List of numeric identifiers (or "None") for informativeness type, separated by commas]\n'
                    'Rationale: [Rationale for the identification in short sentences]\n'),
}
_INPUT_SPEC = {"instruction_following": "[Clearly specify the task goal and restrictions]"}
_FORMAT_HEAD = {"instruction_following": "## Format:", "honesty": "## Format:"}
# the instruction-following annotation numbers its texts from 2 in the released template (harmless:
# ratings are positional); kept, as Tülu 3 sent it
_FIRST_INDEX = {"instruction_following": "loop.index + 1"}


def _ultrafeedback(aspect: str) -> jinja2.Template:
    text = (_GUIDE[aspect] + "\n" + _FORMAT_HEAD.get(aspect, "## Format") + "\n\n### Input\nInstruction: "
            + _INPUT_SPEC.get(aspect, "[Specify task goal and restrictions]") + "\n\nTexts:\n"
            "{% for i in range(1, completions|length + 1) %}\n<text {{ i }}> [Text {{ i }}]\n{% endfor %}\n\n"
            "### Output\n{% for i in range(1, completions|length + 1) %}\n#### Output for Text {{ i }}\n"
            + _TYPE_LINES.get(aspect, "") + "Rating: [Rating for text {{ i }}]\n"
            "Rationale: [Rationale for the rating in short sentences]\n\n{% endfor %}\n"
            + ("\n" if aspect == "truthfulness" else "") + "\n---\n\n## Annotation\n\n### Input\n"
            "Instruction: {{ instruction }}\n\nTexts:\n{% for completion in completions %}\n<text {{ "
            + _FIRST_INDEX.get(aspect, "loop.index") + " }}> {{ completion }}\n{% endfor %}\n\n### Output\n")
    return jinja2.Environment(autoescape=False).from_string(text)


_UF = {a: _ultrafeedback(a) for a in ASPECTS}
_NAMES = {"helpfulness": "helpfulness", "instruction_following": "instruction following", "honesty": "honesty",
          "truthfulness": "truthfulness"}


def single_prompt(aspect: str, instruction: str, completion: str) -> str:
    """The short per-completion prompt (judge.template=single), answered with one line "Rating: N"."""
    na = ", or N/A for creative writing" if aspect == "honesty" else ""
    return (f"Rate the response's {_NAMES[aspect]}: 1 (worst) to 5 (best){na}; reply \"Rating: N\".\n"
            f"Instruction: {instruction}\nResponse: {completion}")


def requests(template: str, aspect: str, instruction: str, completions: list[str]) -> list[list[dict]]:
    """The judge conversations for one prompt and aspect: one rating all completions (ultrafeedback),
    or one per completion (single)."""
    if template == "ultrafeedback":
        user = _UF[aspect].render(instruction=instruction, completions=completions)
        return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]]
    return [[{"role": "user", "content": single_prompt(aspect, instruction, c)}] for c in completions]


_RATING = re.compile(r"^\s*\**Rating\**\s*:\s*\**\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_HEADER = re.compile(r"^\s*#*\s*Output for Text\s+(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


def _value(raw: str, aspect: str) -> float | None:
    """One rating's value: 1..5, NaN for honesty's N/A, None when malformed."""
    raw = raw.strip().strip("*").strip()
    if aspect == "honesty" and re.fullmatch(r"N/?A\.?", raw, re.IGNORECASE):
        return math.nan
    m = re.fullmatch(r"([1-5])(?:\s*(?:/\s*5|out of 5))?\.?(?:\s+.*)?", raw)
    return float(m.group(1)) if m else None


def parse(text: str, aspect: str, n: int) -> list[float] | None:
    """Strict: the ratings of texts 1..n (NaN: honesty's N/A), or None when the reply is malformed."""
    heads = list(_HEADER.finditer(text))
    if heads:
        sections: dict[int, str] = {}
        for k, h in enumerate(heads):
            end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
            i = int(h.group(1))
            if i in sections:
                return None  # a text rated twice
            sections[i] = text[h.end():end]
        if sorted(sections) != list(range(1, n + 1)):
            # the released instruction-following template numbers the annotated texts from 2
            if sorted(sections) == list(range(2, n + 2)):
                sections = {i - 1: s for i, s in sections.items()}
            else:
                return None
        parts = [sections[i] for i in range(1, n + 1)]
    else:
        if n != 1 and len(_RATING.findall(text)) != n:
            return None
        parts = [text] if n == 1 else [m.group(0) for m in _RATING.finditer(text)]
    out = []
    for part in parts:
        found = _RATING.findall(part)
        if len(found) != 1:
            return None
        v = _value(found[0], aspect)
        if v is None:
            return None
        out.append(v)
    return out


_TULU3_PATTERN = {"instruction_following": r"Rating: (.+?)\nRationale: (.+)", "honesty": r"Rating: (.+?)\nRationale: (.+)",
                  "truthfulness": r"Type: (.+?)\nRationale: (.+?)\nRating: (.+?)\nRationale: (.+)",
                  "helpfulness": r"Type: (.+?)\nRationale: (.+?)\nRating: (.+?)\nRationale: (.+)"}


def parse_tulu3(text: str, aspect: str) -> list[int]:
    """The released parser (open-instruct scripts/synth_pref, from UltraFeedback), quirks included."""
    out = []
    group = 1 if aspect in ("instruction_following", "honesty") else 3
    for chunk in text.split("\n\n"):
        m = re.search(_TULU3_PATTERN[aspect], chunk, re.DOTALL)
        if not m:
            out.append(1)
            continue
        raw = m.group(group)
        if group == 1 and raw == "N/A":
            out.append(-1)
            continue
        nums = re.findall(r"\b\d+\b", raw)
        out.append(int(nums[0]) if nums else 1)
    return out
