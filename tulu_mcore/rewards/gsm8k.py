r"""GSM8K: the last number of the response against the ground truth.

Thousands separators are removed first, as released: each comma between two digits, scanning left to
right without overlap ("1,234,567" gives 1234567, "1,2,3" gives "12,3").

Deliberate differences of the default mode from the released Tülu 3 checker, which `tulu3_compat=True`
reproduces:

* a sign belongs to any number, integer or decimal, but only where no word character or digit precedes
  it: in "3-5", "20-15=5" or "2024-01-05" the hyphen is not a minus sign ("-7" and "is -3." are negative).
  The release's pattern ``[-+]?\d*\.\d+|\d+`` signed decimals only, hyphens included ("3-5.5" gave
  "-5.5"), and never integers ("-5" gave "5");
* answers compare as numbers ("18.0" equals "18", "+12" equals "12"), a non-number as stripped lower-case
  text; the release compared lower-cased strings.
"""

from __future__ import annotations

import re
from fractions import Fraction

_THOUSANDS = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"(?:(?<!\w)[-+])?(?:\d*\.\d+|\d+)")  # \w: letters, digits, _
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
