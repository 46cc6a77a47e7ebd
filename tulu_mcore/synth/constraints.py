"""Verifiable constraints of the IFEval taxonomy, drawn with concrete arguments: the plain-English
instruction a prompt carries and the ground truth our IFEval verifier
(:mod:`tulu_mcore.rewards.ifeval`) checks a response against.

One entry per IFEval category (25, the labels of Tülu 3's hand-written seed file, e.g. "length
constraints:number words"), each bound to the verifier function that checks it. A ground truth is
Tülu 3's RLVR format: a flat JSON object with ``func_name`` and every argument name used by any of the
functions, the unused ones null (``allenai/RLVR-IFeval``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

# every argument name of the 25 functions, in the order Tülu 3's ground truths list them
ARGUMENTS = ("keyword_list", "word", "N", "forbidden_words", "letter", "language", "quantifier", "first_word",
             "i", "postscript_marker", "options", "section_splitter", "original_prompt", "end_phrase")
WORDS = ("river", "garden", "history", "light", "market", "journey", "balance", "future", "signal", "memory",
         "harbor", "window", "energy", "pattern", "season", "bridge", "silence", "courage", "orbit", "forest")
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}
END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Any other questions?")
QUANTIFIERS = ("at least", "at most", "around")


@dataclass(frozen=True)
class Constraint:
    category: str  # the IFEval label, e.g. "punctuation:no comma"
    instruction: str  # what the prompt says
    func_name: str
    args: dict

    def ground_truth(self) -> str:
        """Tülu 3's RLVR ground truth: func_name and every argument name, unused ones null."""
        return json.dumps({"func_name": self.func_name, **{k: self.args.get(k) for k in ARGUMENTS}})


def _words(rng: random.Random, k: int) -> list[str]:
    return rng.sample(WORDS, k)


def _forbidden(words: list[str]) -> str:
    return f"Do not include the words {words[0]!r} or {words[1]!r} in the response."


def _draw(category: str, rng: random.Random, prompt: str) -> tuple[str, str, dict]:
    """(instruction, func_name, args) for one category."""
    n = rng.randint(2, 5)
    q = rng.choice(QUANTIFIERS)
    if category == "keywords:include keywords":
        kw = _words(rng, 2)
        return f"Include the keywords {kw[0]!r} and {kw[1]!r} in the response.", "verify_keywords", {"keyword_list": kw}
    if category == "keywords:frequency":
        w = rng.choice(WORDS)
        return f"The word {w!r} should appear exactly {n} times.", "verify_keyword_frequency", {"word": w, "N": n}
    if category == "keywords:forbidden words":
        kw = _words(rng, 2)
        return _forbidden(kw), "validate_forbidden_words", {"forbidden_words": kw}
    if category == "keywords:letter frequency":
        letter = rng.choice("abcdeghilmnoprstuy")
        n = rng.randint(3, 12)
        return (f"The letter {letter!r} should appear exactly {n} times in the response.", "verify_letter_frequency",
                {"letter": letter, "N": n})
    if category == "language:response language":
        code = rng.choice(sorted(LANGUAGES))
        return (f"Your entire response should be in {LANGUAGES[code]}, no other language is allowed.",
                "validate_response_language", {"language": code})
    if category == "length constraints:number paragraphs":
        return (f"There should be {n} paragraphs. Paragraphs are separated with the markdown divider: * * *",
                "verify_paragraph_count", {"N": n})
    if category == "length constraints:number words":
        n = rng.choice((50, 100, 150, 200, 300))
        return f"Answer with {q} {n} words.", "validate_word_constraint", {"N": n, "quantifier": q}
    if category == "length constraints:number sentences":
        n = rng.randint(3, 10)
        return f"Your response should contain {q} {n} sentences.", "verify_sentence_constraint", {"N": n, "quantifier": q}
    if category == "length constraints:nth paragraph first word":
        i, w = rng.randint(1, n), rng.choice(WORDS)
        return (f"There should be {n} paragraphs, separated from each other by two new lines. Paragraph {i} must "
                f"start with the word {w!r}.", "validate_paragraphs", {"N": n, "first_word": w, "i": i})
    if category == "detectable content:postscript":
        marker = rng.choice(("P.S.", "P.P.S"))
        return (f"At the end of your response, please explicitly add a postscript starting with {marker}",
                "verify_postscript", {"postscript_marker": marker})
    if category == "detectable content:number placeholders":
        return (f"The response must contain at least {n} placeholders represented by square brackets, such as "
                "[address].", "validate_placeholders", {"N": n})
    if category == "detectable format:number bullet lists":
        return (f"Your answer must contain exactly {n} bullet points. Use the markdown bullet points such as:\n"
                "* This is point 1.", "verify_bullet_points", {"N": n})
    if category == "detectable format:title":
        return ("Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
                "validate_title", {})
    if category == "detectable format:constrained response":
        options = ["My answer is yes.", "My answer is no.", "My answer is maybe."]
        return (f"Answer with one of the following options: {', '.join(repr(o) for o in options)}",
                "validate_choice", {"options": options})
    if category == "detectable format:number highlighted sections":
        return (f"Highlight at least {n} sections in your answer with markdown, i.e. *highlighted section*.",
                "validate_highlighted_sections", {"N": n})
    if category == "detectable format:multiple sections":
        splitter = rng.choice(("Section", "SECTION"))
        return (f"Your response must have {n} sections. Mark the beginning of each section with {splitter} X, "
                f"such as: {splitter} 1", "validate_sections", {"N": n, "section_splitter": splitter})
    if category == "detectable format:json format":
        return ("Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
                "validate_json_format", {})
    if category == "combination:repeat prompt":
        return ("First repeat the request word for word without change, then give your answer (do not say anything "
                "before repeating the request; the request you need to repeat does not include this sentence)",
                "validate_repeat_prompt", {"original_prompt": prompt})
    if category == "combination:two responses":
        return ("Give two different responses. Responses and only responses should be separated by 6 asterisk "
                "symbols: ******.", "validate_two_responses", {})
    if category == "change case:english capital":
        return ("Your entire response should be in English, and in all capital letters.", "validate_uppercase", {})
    if category == "change case:english lowercase":
        return ("Your entire response should be in English, and in all lowercase letters. No capital letters are "
                "allowed.", "validate_lowercase", {})
    if category == "change case:capital word frequency":
        n = rng.randint(2, 10)
        return (f"In your response, words with all capital letters should appear {q} {n} times.",
                "validate_frequency_capital_words", {"N": n, "quantifier": q})
    if category == "startend:end checker":
        phrase = rng.choice(END_PHRASES)
        return (f"Finish your response with this exact phrase {phrase!r}. No other words should follow this phrase.",
                "validate_end", {"end_phrase": phrase})
    if category == "startend:quotation":
        return "Wrap your entire response with double quotation marks.", "validate_quotation", {}
    if category == "punctuation:no comma":
        return "In your entire response, refrain from the use of any commas.", "validate_no_commas", {}
    raise ValueError(f"unknown IFEval category {category!r}")


CATEGORIES = (
    "keywords:include keywords", "keywords:frequency", "keywords:forbidden words", "keywords:letter frequency",
    "language:response language", "length constraints:number paragraphs", "length constraints:number words",
    "length constraints:number sentences", "length constraints:nth paragraph first word",
    "detectable content:postscript", "detectable content:number placeholders",
    "detectable format:number bullet lists", "detectable format:title", "detectable format:constrained response",
    "detectable format:number highlighted sections", "detectable format:multiple sections",
    "detectable format:json format", "combination:repeat prompt", "combination:two responses",
    "change case:english capital", "change case:english lowercase", "change case:capital word frequency",
    "startend:end checker", "startend:quotation", "punctuation:no comma",
)


def draw(category: str, rng: random.Random, prompt: str = "") -> Constraint:
    """One constraint of `category` with arguments drawn from `rng`; `prompt` is what "repeat the
    request" repeats."""
    instruction, func, args = _draw(category, rng, prompt)
    return Constraint(category, instruction, func, args)


# categories whose constraints cannot hold together in one response (the persona prompts draw up to 3):
# each group's members exclude each other
_WHOLE_SHAPE = {"detectable format:json format", "startend:quotation", "combination:two responses",
                "detectable format:constrained response", "combination:repeat prompt", "startend:end checker"}
_CLASHES = (
    {"change case:english capital", "change case:english lowercase", "change case:capital word frequency"},
    _WHOLE_SHAPE,  # each fixes how the whole response begins or ends
    {"length constraints:number paragraphs", "length constraints:nth paragraph first word",
     "detectable format:multiple sections"},
    {"language:response language", "change case:english capital", "change case:english lowercase"},
    # the end phrase, "P.S.", the sections' "Section", the options' "My answer" hold capitals
    {"change case:english lowercase", "startend:end checker"},
    {"change case:english lowercase", "detectable content:postscript"},
    {"change case:english lowercase", "detectable format:multiple sections"},
    {"change case:english lowercase", "detectable format:constrained response"},
    # all capitals cannot hold a lower-case letter count, a lower-case first word or the end phrase
    {"change case:english capital", "keywords:letter frequency"},
    {"change case:english capital", "length constraints:nth paragraph first word"},
    {"change case:english capital", "startend:end checker"},
    {"change case:english capital", "detectable format:constrained response"},
    {"detectable content:postscript", "startend:end checker"},  # the postscript would follow the end phrase
)
_WORD_ARGS = ("keyword_list", "word", "first_word")


def _words_of(c: Constraint) -> set[str]:
    out = set()
    for k in _WORD_ARGS:
        v = c.args.get(k)
        out.update(v if isinstance(v, list) else [v] if v else [])
    return out


def sample(rng: random.Random, k: int, categories=CATEGORIES, prompt: str = "") -> list[Constraint]:
    """k constraints of distinct categories that can hold together (Tülu 3's persona IF prompts: k in
    1..3 drawn uniformly, distinct categories; the clash rules are ours: the seed file paired any), and
    no forbidden word that another constraint asks for."""
    chosen: list[str] = []
    pool = list(categories)
    rng.shuffle(pool)
    for c in pool:
        if len(chosen) == k:
            break
        if any(c in group and any(o in group for o in chosen) for group in _CLASHES):
            continue
        chosen.append(c)
    drawn = [draw(c, rng, prompt) for c in chosen]
    for i, c in enumerate(drawn):
        if c.func_name != "validate_forbidden_words":
            continue
        wanted = set().union(*(_words_of(o) for o in drawn if o is not c))
        free = [w for w in WORDS if w not in wanted]
        words = rng.sample(free, 2)
        drawn[i] = Constraint(c.category, _forbidden(words), c.func_name, {"forbidden_words": words})
    return drawn
