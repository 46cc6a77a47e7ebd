"""tulu3_compat: the released Tülu 3 checkers (open-instruct, Nov 2024: ground_truth_utils, math_utils,
if_functions). Every expected verdict here was obtained by running the released functions on the case
(sympy 1.14, antlr4-python3-runtime 4.11.1, langdetect seeded) and is written as a literal."""

import json
import signal
import time

import pytest

from tulu_mcore.rewards import check, math_tulu3, verify

# ----------------------------------------------------------------------------- MATH, quirks
MATH_QUIRKS = [  # (response, ground truth, the release's verdict)
    # the Minerva sentence needs the response's own " I hope it is correct" (dots match anything, not \n)
    ("Final Answer: The final answer is 7. I hope it is correct.", "7", True),
    ("Final Answer: The final answer is 7.", "7", False),
    ("Final Answer: The final answer is 7.I hope it is correct.", "7", False),
    ("Final Answer: The final answer is 7! I hope it is correct!", "7", True),
    ("Final Answer: The final answer is $7$.\nI hope it is correct.", "7", True),  # via the last $...$
    ("Final Answer: The final answer is. I hope it is correct.", "", True),  # an empty candidate
    # \fbox is dropped; \boxed wins over a later \fbox; "\boxed " with a space wins over a later \boxed{}
    ("The answer is \\fbox{5}.", "5", False),
    ("The answer is $\\fbox{5}$.", "5", False),
    ("$\\boxed{5}$ or $\\fbox{6}$", "5", True),
    ("$\\boxed{5}$ or $\\fbox{6}$", "6", False),
    ("$\\fbox{6}$ or $\\boxed{5}$", "5", True),
    ("$\\boxed 3$, then $\\boxed{4}$", "3", True),
    ("$\\boxed 3$, then $\\boxed{4}$", "4", False),
    ("\\boxed5", "5", False),
    ("\\boxed5 and {6}", "5", False),
    ("\\boxed{5", "5", False),
    ("\\boxed{\\boxed{7}}", "7", True),
    ("The answer is \\boxed{2} \\boxed{3}", "3", True),
    ("\\boxed{10}", "\\boxed{10}", False),  # the ground truth is used as given
    # SymPy keeps the first item of a comma list
    ("\\boxed{\\frac{1}{2}, 3}", "\\frac12", True),
    ("\\boxed{1, 2}", "1", True),
    # Hendrycks: a second "\text{ " fails (raw strings compared), a bare % stays, \sqrt takes any character
    ("\\boxed{5 \\text{ cm}}", "5", True),
    ("\\boxed{5 \\text{ cm} \\text{ long}}", "5", False),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{50%}", "50", False),
    ("\\boxed{\\sqrt\\pi}", "\\sqrt{\\pi}", False),
    ("\\boxed{x/y}", "\\frac{x}{y}", True),  # SymPy, not Hendrycks (x is not an integer)
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{01/2}", "\\frac{1}{2}", False),
    ("The answer: \\boxed{x = 5}", "5", True),
    ("The answer: \\boxed{k=5}", "5", True),
    # the last $...$ only without a boxed or Minerva answer; else the whole response
    ("$1$ and $2$ then $3$", "2", False),
    ("$1$ and $2$ then $3$", "3", True),
    ("no answer", "no answer", True),
    # the text after the last "<|assistant|>\n"
    ("<|user|>\nWhat is 2+2?\n<|assistant|>\nIt is \\boxed{4}", "4", True),
    ("<|assistant|>\nfirst \\boxed{3}\n<|assistant|>\nsecond \\boxed{4}", "3", False),
    ("<|assistant|>\nfirst \\boxed{3}\n<|assistant|>\nsecond \\boxed{4}", "4", True),
]


@pytest.mark.parametrize("response,truth,expected", MATH_QUIRKS)
def test_math_quirks_as_released(response, truth, expected):
    v = check("math", response, truth, tulu3_compat=True)
    assert v.status == "ok" and v.verified is expected, v


# ----------------------------------------------------------------------------- MATH, varied answers
TEMPLATES = {
    "boxed": "We compute carefully. The answer is $\\boxed{%s}$.",
    "minerva": "Final Answer: The final answer is $%s$. I hope it is correct.",
    "dollars": "So the value is $%s$",
    "plain": "%s",
    "boxed_space": "Therefore \\boxed %s",
}
MATH_RELEASE = [  # (template, answer, ground truth, the release's verdict)
    ("boxed", "0.5", "\\frac{1}{2}", True),
    ("minerva", "1/2", "\\frac{1}{2}", True),
    ("boxed", "\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("boxed", "\\frac12", "\\frac{1}{2}", True),
    ("minerva", "\\frac{6}{8}", "\\frac{3}{4}", True),
    ("dollars", "0.75", "\\frac{3}{4}", True),
    ("boxed", "3/4", "\\frac{3}{4}", True),
    ("boxed", ".75", "\\frac{3}{4}", False),
    ("dollars", "-5/3", "-\\frac{5}{3}", True),
    ("plain", "\\frac{-5}{3}", "-\\frac{5}{3}", True),
    ("boxed", "-\\dfrac{5}{3}", "-\\frac{5}{3}", True),
    ("boxed", "\\frac{5}{3}", "-\\frac{5}{3}", False),
    ("plain", "\\sqrt{12}", "2\\sqrt{3}", True),
    ("boxed_space", "2\\sqrt3", "2\\sqrt{3}", True),
    ("boxed", "\\sqrt{3}\\cdot 2", "2\\sqrt{3}", True),
    ("boxed", "2 \\sqrt{3}", "2\\sqrt{3}", True),
    ("boxed_space", "\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("boxed", "\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("boxed", "\\frac{\\sqrt2}{2}", "\\frac{\\sqrt{2}}{2}", True),
    ("boxed", "0.7071", "\\frac{\\sqrt{2}}{2}", False),
    ("boxed", "\\pi \\cdot 12", "12\\pi", True),
    ("minerva", "12 \\pi", "12\\pi", True),
    ("boxed", "6\\pi+6\\pi", "12\\pi", True),
    ("boxed", "37.7", "12\\pi", False),
    ("minerva", "(-\\infty,3]", "(-\\infty, 3]", False),
    ("dollars", "(-\\infty, 3)", "(-\\infty, 3]", False),
    ("boxed", "x \\le 3", "(-\\infty, 3]", False),
    ("dollars", "[2,5)", "[2, 5)", True),
    ("plain", "(2,5)", "[2, 5)", False),
    ("boxed", "[2, 5)", "[2, 5)", True),
    ("plain", "(2,3)", "(2, 3)", True),
    ("boxed_space", "(3,2)", "(2, 3)", False),
    ("boxed", "\\left( 2, 3 \\right)", "(2, 3)", True),
    ("boxed", "(2, 4)", "(2, 3)", False),
    ("boxed_space", "5 \\text{ cm}", "5", True),
    ("boxed", "5\\text{ cm}", "5", True),
    ("boxed", "5 \\text{ cm}^2", "5", True),
    ("boxed", "\\text{5 cm}", "5", False),
    ("boxed", "10 \\text{ inches}", "10", True),
    ("minerva", "10 inches", "10", True),
    ("boxed", "\\$10", "10", True),
    ("boxed", "10 \\text{ dollars}", "10", True),
    ("minerva", "50\\%", "50", True),
    ("dollars", "50%", "50", False),
    ("boxed", "50 \\%", "50", True),
    ("boxed", "0.5", "50", False),
    ("dollars", "50", "50\\%", True),
    ("plain", "50\\%", "50\\%", True),
    ("boxed", "50%", "50\\%", False),
    ("plain", "90^\\circ", "90", True),
    ("boxed_space", "90^{\\circ}", "90", True),
    ("boxed", "90 degrees", "90", False),
    ("boxed", "\\frac{\\pi}{2}", "90", False),
    ("boxed_space", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("boxed", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", False),
    ("boxed", "(1,2)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", False),
    ("boxed", "5", "x=5", True),
    ("minerva", "x = 5", "x=5", True),
    ("boxed", "x=5", "x=5", True),
    ("minerva", "2x+3", "y = 2x + 3", True),
    ("dollars", "y=2x+3", "y = 2x + 3", True),
    ("boxed", "y = 3 + 2x", "y = 2x + 3", False),
    ("dollars", "x^2+2x+1", "(x+1)^2", True),
    ("plain", "x^2+1", "(x+1)^2", False),
    ("boxed", "(1+x)^2", "(x+1)^2", True),
    ("plain", "- 3", "-3", True),
    ("boxed_space", "-3.0", "-3", True),
    ("boxed", "3", "-3", False),
    ("boxed", "-3", "-3", True),
    ("boxed_space", ".25", "0.25", True),
    ("boxed", "\\frac14", "0.25", True),
    ("boxed", "1/4", "0.25", True),
    ("boxed", "0.250", "0.25", True),
    ("boxed", "1.50", "1.5", True),
    ("minerva", "\\frac{3}{2}", "1.5", True),
    ("boxed", "3/2", "1.5", True),
    ("boxed", "1\\frac{1}{2}", "1.5", False),
    ("minerva", "1,2", "1, 2", False),
    ("dollars", "2, 1", "1, 2", False),
    ("boxed", "1", "1, 2", True),
    ("boxed", "1 \\text{ and } 2", "1, 2", False),
    ("dollars", "\\frac{1}{2}, 3", "\\frac12", True),
    ("plain", "\\frac{1}{2}", "\\frac12", True),
    ("plain", "1,000", "1000", True),
    ("boxed_space", "10^3", "1000", True),
    ("boxed", "1{,}000", "1000", False),
    ("boxed", "1000.0", "1000", True),
    ("boxed_space", "(C)", "\\text{(C)}", False),
    ("boxed", "C", "\\text{(C)}", False),
    ("boxed", "\\text{C}", "\\text{(C)}", True),
    ("boxed", "\\textbf{(C)}", "\\text{(C)}", False),
    ("boxed", "Monday", "\\text{Monday}", False),
    ("minerva", "\\text{monday}", "\\text{Monday}", False),
    ("minerva", "2^{10}", "1024", True),
    ("dollars", "2^10", "1024", True),
    ("boxed", "1,024", "1024", True),
    ("dollars", "\\infty", "\\infty", False),
    ("plain", "+\\infty", "\\infty", False),
    ("boxed", "-\\infty", "\\infty", False),
    ("plain", "2i+1", "1+2i", True),
    ("boxed_space", "1 + 2i", "1+2i", True),
    ("boxed", "1-2i", "1+2i", False),
    ("boxed_space", "\\log_2 8", "3", True),
    ("boxed", "\\sqrt{9}", "3", True),
    ("boxed", "\\frac{6}{2}", "3", True),
    ("boxed", "3.0", "3", True),
    ("boxed", "\\sin(\\pi/6)", "\\frac{1}{2}", False),
    ("minerva", "\\sin \\frac{\\pi}{6}", "\\frac{1}{2}", False),
    ("boxed", "\\cos(\\pi/3)", "\\frac{1}{2}", False),
    ("minerva", "5", "101_2", False),
    ("dollars", "101_2", "101_2", True),
    ("boxed", "101_{2}", "101_2", True),
    ("dollars", "x/2", "\\frac{x}{2}", True),
    ("plain", "\\frac x2", "\\frac{x}{2}", True),
    ("boxed", "0.5x", "\\frac{x}{2}", True),
    ("plain", "a/b", "a/b", True),
    ("boxed_space", "\\frac{a}{b}", "a/b", True),
    ("boxed_space", "\\sqrt", "3", False),
    ("boxed", "3\\frac", "3", True),
    ("boxed", "3\\sqrt", "3", True),
    ("boxed", "\\sqrt\\pi", "\\sqrt{\\pi}", False),
    ("minerva", "\\sqrt{\\pi}", "\\sqrt{\\pi}", True),
    ("minerva", "3.5", "\\frac{7}{2}", True),
    ("dollars", "\\frac72", "\\frac{7}{2}", True),
    ("boxed", "7/2", "\\frac{7}{2}", True),
    ("dollars", "2.25", "\\dfrac{9}{4}", True),
    ("plain", "9/4", "\\dfrac{9}{4}", True),
    ("boxed", "\\frac94", "\\dfrac{9}{4}", True),
    ("plain", "-2,3", "-2, 3", True),
    ("boxed_space", "3, -2", "-2, 3", False),
    ("boxed_space", "1+2\\sqrt2", "2\\sqrt{2}+1", False),
    ("boxed", "1 + \\sqrt{8}", "2\\sqrt{2}+1", True),
    ("boxed", "18.90", "\\$18.90", True),
    ("minerva", "\\$18.90", "\\$18.90", True),
    ("boxed", "18.9", "\\$18.90", False),
    ("minerva", "6", "6\\text{ days}", True),
    ("dollars", "6 days", "6\\text{ days}", False),
    ("dollars", "0", "0", True),
    ("plain", "-0", "0", True),
    ("boxed", "0.0", "0", True),
    ("plain", "-4+4\\sqrt{3}", "4\\sqrt{3}-4", True),
    ("boxed_space", "4(\\sqrt3-1)", "4\\sqrt{3}-4", False),
    ("boxed_space", "even", "\\text{even}", False),
    ("boxed", "\\text{even}", "\\text{even}", True),
    ("boxed", "\\text{odd}", "\\text{even}", False),
]


@pytest.mark.parametrize("template,answer,truth,expected", MATH_RELEASE)
def test_math_as_released(template, answer, truth, expected):
    v = check("math", TEMPLATES[template] % answer, truth, tulu3_compat=True)
    assert v.status == "ok" and v.verified is expected, v


def test_math_compat_differs_from_the_default_where_the_release_did():
    # compat verdicts: the release's checker on these cases
    for response, truth in [("\\boxed{50%}", "50"), ("$\\boxed 3$, then $\\boxed{4}$", "4"),
                            ("\\boxed{10}", "\\boxed{10}"),
                            ("<|user|>\nIs it \\boxed{5}?\n<|assistant|>\nThe answer is 7", "5")]:
        assert verify("math", response, truth) and not verify("math", response, truth, tulu3_compat=True)
    for response, truth in [("\\boxed{1, 2}", "1"), ("\\boxed{1, 3}", "1, 2")]:  # first items only
        assert verify("math", response, truth, tulu3_compat=True) and not verify("math", response, truth)


# ----------------------------------------------------------------------------- SymPy's LaTeX parser
PARSES = [  # (LaTeX, sympy.srepr of the release's parse_latex, or None where it raised LaTeXParsingError)
    ("\\frac{1}{2}, 3", "Pow(Integer(2), Integer(-1))"),
    ("1, 2", "Integer(1)"),
    ("2\\sqrt{3}", "Mul(Integer(2), Pow(Integer(3), Rational(1, 2)))"),
    ("12\\pi", "Mul(Integer(12), Symbol('pi'))"),
    ("\\frac{x}{2}", "Mul(Pow(Integer(2), Integer(-1)), Symbol('x'))"),
    ("0.25", "Float('0.25', precision=53)"),
    ("1+2i", "Add(Mul(Integer(2), Symbol('i')), Integer(1))"),
    ("x=5", "Equality(Symbol('x'), Integer(5))"),
    ("x \\le 5", "LessThan(Symbol('x'), Integer(5))"),
    ("90^\\circ", "Pow(Integer(90), Symbol('circ'))"),
    ("\\text{(C)}", "Mul(Symbol('C'), Symbol('text'))"),
    ("\\sqrt[3]{27}", "Pow(Integer(27), Rational(1, 3))"),
    ("\\int_0^1 x^2 dx",
     "Integral(Pow(Symbol('x'), Integer(2)), Tuple(Symbol('x'), Integer(0), Integer(1)))"),
    ("\\frac{dy}{dx}", "Derivative(Symbol('y'), Tuple(Symbol('x'), Integer(1)))"),
    ("5!", "factorial(Integer(5))"),
    ("\\binom{5}{2}", "binomial(Integer(5), Integer(2))"),
    ("\\log_{10} 1000", "log(Integer(1000), Integer(10))"),
    ("x_1 + x_{12}", "Add(Symbol('x_{12}'), Symbol('x_{1}'))"),
    ("\\mathit{abc}", "Symbol('abc')"),
    ("(2, 3)", None),
    ("(-\\infty, 3]", None),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", None),
    ("50%", None),
    ("5\\%", None),
    ("\\sqrt\\pi", None),
    ("\\frac{}{}", None),
]


@pytest.mark.parametrize("latex,expected", PARSES)
def test_sympy_parse_latex_as_under_antlr_4_11(latex, expected):
    import sympy
    from sympy.parsing.latex.errors import LaTeXParsingError

    from tulu_mcore.rewards.sympy_latex import parse_latex

    if expected is None:
        with pytest.raises(LaTeXParsingError):
            parse_latex(latex)
    else:
        assert sympy.srepr(parse_latex(latex)) == expected


def test_the_parser_leaves_the_installed_modules_alone(capsys):
    import antlr4
    import antlr4.atn.ATNDeserializer as deserializer_module

    from tulu_mcore.rewards.sympy_latex import parse_latex

    before = deserializer_module.ATNDeserializer
    parse_latex("x+1")
    assert deserializer_module.ATNDeserializer is before and antlr4.ATNDeserializer is before
    assert capsys.readouterr().out == ""  # no runtime-version warning printed


# ----------------------------------------------------------------------------- time bounds
def _hang_on(marker, real):
    def parse(text):
        if marker in text:
            while True:
                time.sleep(0.01)
        return real(text)
    return parse


def test_is_equiv_gives_up_after_its_own_bound_and_goes_on(monkeypatch):
    # candidates: "hang" (SymPy hangs), then 14/2 (equal to 7 for SymPy only): the release went on after 5 s
    monkeypatch.setattr(math_tulu3, "parse_latex", _hang_on("hang", math_tulu3.parse_latex))
    monkeypatch.setattr(math_tulu3, "IS_EQUIV_TIMEOUT_S", 0.2)
    response = "\\boxed{hang}\nFinal Answer: The final answer is 14/2. I hope it is correct."
    t0 = time.time()
    assert check("math", response, "7", tulu3_compat=True, timeout_s=5.0).verified
    assert time.time() - t0 < 3
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # check's own timer disarmed after


def test_the_outer_bound_still_holds_in_compat(monkeypatch):
    monkeypatch.setattr(math_tulu3, "parse_latex", _hang_on("hang", math_tulu3.parse_latex))
    t0 = time.time()
    v = check("math", "\\boxed{hang}", "7", tulu3_compat=True, timeout_s=0.3)
    assert v.status == "timeout" and not v.verified and time.time() - t0 < 2


# ----------------------------------------------------------------------------- GSM8K
GSM8K_RELEASE = [  # (response, ground truth, the release's verdict)
    ("The answer is 5.", "5", True),
    ("#### 1,234", "1234", True),
    ("3-5", "-5", False),
    ("3-5", "5", True),
    ("20-15=5", "5", True),
    ("2024-01-05", "05", True),
    ("2024-01-05", "5", False),
    ("-7", "-7", False),
    ("-7", "7", True),
    ("is -3.", "-3", False),
    ("is -3.", "3", True),
    ("-5.5 left", "-5.5", True),
    ("x-3.5", "-3.5", True),
    ("5-3.5", "-3.5", True),
    ("18.0", "18", False),
    ("18.0", "18.0", True),
    ("1,2,3", "3", True),
    ("1,2,3", "12,3", False),
    ("1,234,567", "1234567", True),
    ("12,34", "1234", True),
    ("1,23,456", "123456", True),
    ("$1,000.50", "1000.50", True),
    ("+12", "12", True),
    ("+12", "+12", False),
    (".5", ".5", True),
    (".5", "0.5", False),
    ("3.", "3", True),
    ("1e5", "5", True),
    ("0.50", "0.5", False),
    ("007", "007", True),
    ("007", "7", False),
    ("-0", "0", True),
    ("no number", "no number", True),
    ("  Spaces  ", "spaces", True),
    ("Five", "five", True),
    ("<|assistant|>\nThe answer is 4", "4", True),
    ("<|user|>\n7\n<|assistant|>\nno number here", "no number here", True),
    ("<|assistant|>\n  Five  ", "Five", True),
]


@pytest.mark.parametrize("response,truth,expected", GSM8K_RELEASE)
def test_gsm8k_as_released(response, truth, expected):
    assert verify("gsm8k", response, truth, tulu3_compat=True) is expected


# ----------------------------------------------------------------------------- IFEval
PARAGRAPHS = "Intro here\n\nThe second one\n\nThe end"


def gt(func_name, **kw):
    return {"func_name": func_name, **kw}


IFEVAL_RELEASE = [  # (response, ground truth, the release's verdict; "error": it raised)
    ("no placeholders", gt("validate_placeholders", N=2), True),
    ("Dear [name], at [address]!", gt("validate_placeholders", N=2), True),
    ("yes", gt("validate_choice", options=["yes", "no"]), True),
    ("My answer is yes.", gt("validate_choice", options=["yes", "no"]), False),
    ("yes", gt("validate_choice", options=["yes, definitely", "no"]), True),
    ("ONE TWO THREE FOUR rest", gt("validate_frequency_capital_words", N=4, quantifier="around"), True),
    ("ONE TWO THREE FOUR rest", gt("validate_frequency_capital_words", N=5, quantifier="around"), False),
    ("Hi! There.", gt("verify_sentence_constraint", N=2, quantifier="at least"), False),
    ("One. Two? Three.", gt("verify_sentence_constraint", N=3, quantifier="around"), True),
    (PARAGRAPHS, gt("validate_paragraphs", N=3, first_word="The", i=2), True),
    (PARAGRAPHS, gt("validate_paragraphs", N=3, first_word="The", i=0), True),
    (PARAGRAPHS, gt("validate_paragraphs", N=3, first_word="The", i=-1), True),
    ("<<T>>\ntext", gt("validate_title", N=None), True),
    ("<<T>>\ntext", gt("validate_title", N=3), "error"),
    ("<|assistant|>\nALL CAPS", gt("validate_uppercase"), True),
    ("w w w w w w w w w w w ", gt("validate_word_constraint", N=10, quantifier="around"), True),
    ("cat dog cat CAT", gt("verify_keyword_frequency", word="cat", N=3), True),
]


@pytest.mark.parametrize("response,truth,expected", IFEVAL_RELEASE)
def test_ifeval_as_released(response, truth, expected):
    v = check("ifeval", response, json.dumps(truth), tulu3_compat=True)
    if expected == "error":
        assert v.status == "error" and not v.verified
    else:
        assert v.status == "ok" and v.verified is expected, v


def test_ifeval_default_mode_differs_where_the_release_was_wrong():
    last = json.dumps(gt("validate_paragraphs", N=3, first_word="The", i=0))
    assert verify("ifeval", PARAGRAPHS, last, tulu3_compat=True) and not verify("ifeval", PARAGRAPHS, last)
    title = json.dumps(gt("validate_title", N=3))
    assert verify("ifeval", "<<T>>", title)
    assert check("ifeval", "<<T>>", title, tulu3_compat=True).status == "error"  # an unknown argument
    upper = json.dumps(gt("validate_uppercase"))
    tagged = "<|user|>\nhello\n<|assistant|>\nALL CAPS"
    assert verify("ifeval", tagged, upper, tulu3_compat=True) and not verify("ifeval", tagged, upper)


def test_a_row_without_ground_truth_scores_zero_in_both_modes():
    # the release's trainer gave 0 to a row whose ground truth is None
    for compat in (False, True):
        v = check("gsm8k", "none", None, tulu3_compat=compat)
        assert v.status == "error" and not v.verified and v.detail == "no ground truth"
