"""IFEval-style constraints, as the Tülu 3 RLVR data states them: a JSON ground truth with ``func_name``
and the function's arguments (absent or null arguments are dropped).

The 25 checks follow the released Tülu 3 checker's semantics (argument names included). The default
mode differs from the release on purpose where the release was wrong; `tulu3_compat=True` reproduces it:

* ``validate_placeholders`` returned a tuple, always truthy: every response passed;
* ``validate_choice`` tested whether the response is part of an option, not the other way round;
* ``validate_frequency_capital_words`` treated "around" as exact equality (fixed: +-10 %, at least 1,
  as ``validate_word_constraint``);
* ``verify_sentence_constraint`` ended sentences at "." and "?" only ("!" too here);
* ``validate_paragraphs`` indexed paragraph ``i - 1`` as a Python list (i = 0 is the last paragraph);
  here i must be 1..N;
* the release passed every non-null argument, so an argument a function does not take was an error;
  here it is ignored.

In both modes ``validate_response_language`` seeds langdetect (the release did not, so its verdict on
ambiguous text could change from call to call), and a check that raises (a bad ground truth, langdetect
on text without letters) scores no reward, as ``check`` counts it.
"""

from __future__ import annotations

import inspect
import json
import re


def _compare(count: int, n: int, quantifier: str, tolerance: int) -> bool:
    if quantifier == "at least":
        return count >= n
    if quantifier == "at most":
        return count <= n
    if quantifier == "around":
        return abs(count - n) <= tolerance
    return False


def _ten_percent(n: int) -> int:
    return max(round(n * 0.1), 1)


def verify_keywords(text, keyword_list, **_):
    low = text.lower()
    return all(k.lower() in low for k in keyword_list)


def verify_keyword_frequency(text, word, N, **_):
    return re.findall(r"\b\w+\b", text.lower()).count(word.lower()) == N


def validate_forbidden_words(text, forbidden_words, **_):
    low = text.lower()
    return not any(w.lower() in low for w in forbidden_words)


def verify_letter_frequency(text, letter, N, **_):
    if len(letter) != 1:
        raise ValueError(f"letter must be one character, got {letter!r}")
    return text.count(letter) == N


def validate_response_language(text, language, **_):
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0  # langdetect is random unless seeded
    return detect(text) == language


def verify_paragraph_count(text, N, **_):
    clean = "\n".join(line.strip() for line in text.splitlines()).strip()
    parts = clean.split("* * *")
    return all(p.strip() for p in parts) and len(parts) == N


def validate_word_constraint(text, N, quantifier, **_):
    return _compare(len(text.strip().split()), N, quantifier, _ten_percent(N))


_SENTENCE_END = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s")
_SENTENCE_END_FIXED = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s")


def verify_sentence_constraint(text, N, quantifier, *, compat=False, **_):
    count = len((_SENTENCE_END if compat else _SENTENCE_END_FIXED).split(text))
    return _compare(count, N, quantifier, 1)


def validate_paragraphs(text, N, first_word, i, *, compat=False, **_):
    parts = text.split("\n\n")
    if len(parts) != N:
        return False
    if not compat and not 1 <= i <= N:
        return False
    return parts[i - 1].strip().startswith(first_word)  # compat: i <= 0 counts from the end, as released


def verify_postscript(text, postscript_marker, **_):
    k = text.find(postscript_marker)
    return k >= 0 and len(text[k:].strip()) > len(postscript_marker)


def validate_placeholders(text, N, *, compat=False, **_):
    found = re.findall(r"\[(.*?)\]", text)
    return (len(found) >= N, found) if compat else len(found) >= N  # the release's tuple is always truthy


def verify_bullet_points(text, N, **_):
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


def validate_title(text, **_):
    return re.search(r"<<(.*?)>>", text) is not None


def validate_choice(text, options, *, compat=False, **_):
    if compat:  # the release: the response must be part of an option
        return any(text in o for o in options)
    return any(o in text for o in options)


def validate_highlighted_sections(text, N, **_):
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def validate_sections(text, N, section_splitter, **_):
    parts = text.split(section_splitter)
    if parts and parts[0] == "":
        parts = parts[1:]
    return len(parts) == N


def validate_json_format(text, **_):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text, original_prompt, **_):
    return text.startswith(original_prompt)


def validate_two_responses(text, **_):
    if text.count("******") != 1:
        return False
    first, second = text.split("******")[:2]
    return first.strip() != second.strip()


def validate_uppercase(text, **_):
    return text == text.upper()


def validate_lowercase(text, **_):
    return text == text.lower()


def validate_frequency_capital_words(text, N, quantifier, *, compat=False, **_):
    count = len(re.findall(r"\b[A-Z]+\b", text))
    return _compare(count, N, quantifier, 0 if compat else _ten_percent(N))


def validate_end(text, end_phrase, **_):
    return text.endswith(end_phrase)


def validate_quotation(text, **_):
    return text.startswith('"') and text.endswith('"')


def validate_no_commas(text, **_):
    return "," not in text


FUNCTIONS = {f.__name__: f for f in (
    verify_keywords, verify_keyword_frequency, validate_forbidden_words, verify_letter_frequency,
    validate_response_language, verify_paragraph_count, validate_word_constraint, verify_sentence_constraint,
    validate_paragraphs, verify_postscript, validate_placeholders, verify_bullet_points, validate_title,
    validate_choice, validate_highlighted_sections, validate_sections, validate_json_format,
    validate_repeat_prompt, validate_two_responses, validate_uppercase, validate_lowercase,
    validate_frequency_capital_words, validate_end, validate_quotation, validate_no_commas,
)}
_COMPAT_AWARE = {"validate_placeholders", "validate_choice", "validate_frequency_capital_words",
                 "verify_sentence_constraint", "validate_paragraphs"}


def _parameters(function) -> set[str]:
    params = inspect.signature(function).parameters.values()
    return {p.name for p in params if p.kind is not p.VAR_KEYWORD} - {"text", "compat"}


def verify(response: str, ground_truth, *, tulu3_compat: bool = False) -> bool:
    """`ground_truth`: the JSON string (or dict) with ``func_name`` and arguments."""
    spec = json.loads(ground_truth) if isinstance(ground_truth, str) else dict(ground_truth)
    name = spec.pop("func_name", None)
    if name not in FUNCTIONS:
        raise ValueError(f"unknown IFEval function {name!r}")
    kwargs = {k: v for k, v in spec.items() if v is not None}
    unexpected = sorted(set(kwargs) - _parameters(FUNCTIONS[name]))
    if tulu3_compat and unexpected:  # the release called the function with them: a TypeError
        raise TypeError(f"{name} got unexpected arguments {unexpected}")
    if name in _COMPAT_AWARE:
        kwargs["compat"] = tulu3_compat
    # the release judged the result's truth value (a tuple from validate_placeholders passes)
    return bool(FUNCTIONS[name](response.strip(), **kwargs))
