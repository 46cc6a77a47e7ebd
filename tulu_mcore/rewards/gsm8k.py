"""GSM8K: the last number of the response against the ground truth.

Thousands separators (a comma between digits) are removed first. By default the sign belongs to every
number and answers compare as numbers ("18.0" equals "18"). The released Tülu 3 checker
(`tulu3_compat=True`) kept the sign on decimals only and compared lower-cased strings.
"""

from __future__ import annotations

import re
from fractions import Fraction

_THOUSANDS = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?(?:\d*\.\d+|\d+)")
_NUMBER_COMPAT = re.compile(r"[-+]?\d*\.\d+|\d+")


def extract(response: str, *, tulu3_compat: bool = False) -> str:
    text = _THOUSANDS.sub(r"\1\2", response)
    numbers = (_NUMBER_COMPAT if tulu3_compat else _NUMBER).findall(text)
    return numbers[-1] if numbers else text


def _as_number(s: str) -> Fraction | None:
    try:
        return Fraction(_THOUSANDS.sub(r"\1\2", s.strip()))
    except (ValueError, ZeroDivisionError):
        return None


def verify(response: str, ground_truth: str, *, tulu3_compat: bool = False) -> bool:
    answer = extract(response, tulu3_compat=tulu3_compat)
    if tulu3_compat:
        return str(answer).lower() == str(ground_truth).lower()
    a, b = _as_number(answer), _as_number(str(ground_truth))
    if a is not None and b is not None:
        return a == b
    return answer.strip().lower() == str(ground_truth).strip().lower()
