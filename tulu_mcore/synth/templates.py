"""Tülu 3's persona-driven synthesis prompts (the paper's Figs. 30-36; open-instruct's
persona_driven_data_gen): one user message that asks the generator for a problem in a persona's voice,
then one that asks for its solution. A problem prompt names the prefix the answer must start with
("Math problem:", "User instruction:", "Question: Write a python function to"); the prefix is cut
from the answer, as the original post-processing did."""

from __future__ import annotations

import re

SKILLS = ("instruction_following", "math", "grade_math", "algebra", "code")
PREFIX = {"instruction_following": "User instruction:", "math": "Math problem:", "grade_math": "Math problem:",
          "algebra": "Math problem:", "code": "Question:"}
_NO_SOLUTION = "Note that your response should begin with {prefix!r}. Do not include a solution or an answer."

PROBLEM = {
    "instruction_following": (
        "Create a verifiable instruction that the following persona might ask you to do:\n\n{persona}\n\n"
        "An example of verifiable instruction could be: {example}\n\n"
        "Note:\n1. The above example is not tied to any particular persona, but you should create one that is "
        "unique and specific to the given persona.\n"
        "2. The instruction should contain all the following verifiable constraint(s): {constraints}\n"
        "3. Your output should start with \"User instruction:\". Your output should not include an answer to "
        "the instruction."),
    "math": (
        "Create a math problem related to the following persona:\n\n{persona}\n\n"
        "Note:\n1. The math problem should be challenging and involve advanced mathematical skills and knowledge. "
        "Only top talents can solve it correctly.\n"
        "2. You should make full use of the persona description to create the math problem to ensure that the "
        "math problem is unique and specific to the persona.\n"
        "3. Your response should always start with \"Math problem:\". Your response should not include a "
        "solution to the created math problem.\n"
        "4. Your created math problem should include no more than 2 sub-problems."),
    "grade_math": (
        "Create a grade school math word problem related to the following persona:\n\n{persona}\n\n"
        "Note:\n1. The problem should take 2 to 8 elementary steps (addition, subtraction, multiplication, "
        "division) to reach one final numerical answer.\n"
        "2. Make the problem unique and specific to the persona.\n"
        "3. Your response should always start with \"Math problem:\". Your response should not include a "
        "solution to the created math problem."),
    "algebra": (
        "Create a math problem related to the following persona:\n\n{persona}\n\n"
        "Note:\n1. The math problem should be about intermediate algebra: polynomial equations, linear or "
        "quadratic equations, inequalities, or simplifying rational or radical expressions.\n"
        "2. Make the problem unique and specific to the persona.\n"
        "3. Your response should always start with \"Math problem:\". Your response should not include a "
        "solution to the created math problem.\n"
        "4. Your created math problem should include no more than 2 sub-problems."),
    "code": (
        "{persona}\n\nAssume you are the persona described above and you are asking a python programming "
        "question in stackoverflow.\n\n"
        "Note:\n1. Your written question should be entry- to medium-level.\n"
        "2. Specify the input type, the expected output, and optionally an example.\n"
        "3. Your response should always start with \"Question: Write a python function to\". Your response "
        "should not include a solution."),
}

SOLUTION = {
    "instruction_following": (
        "Provide a response to the given instruction while satisfying the constraints.\n"
        "Instruction: {problem}\n"
        "Note that you should follow the instruction precisely and satisfy all the constraints."),
    "math": (
        "Provide a solution to the given math problem.\nProblem: {problem}\n"
        "Note that you should solve the problem step by step, and then, on a new line, end with: "
        "\"Final Answer: The final answer is $final_answer$. I hope it is correct.\""),
    "grade_math": (
        "Solve the given math problem step by step.\nProblem: {problem}\n"
        "Note that you should give your reasoning, then output only a single final answer after \"####\"."),
    "code": (
        "Answer the given python question.\nQuestion: {problem}\n"
        "Note that you should start with the function definition and end with the final return statement; "
        "include only the python function."),
}
SOLUTION["algebra"] = SOLUTION["math"]

# a problem that already holds an answer or a program is not a problem (our filter; the original had none)
LEAK = re.compile(r"Final Answer|####|```|\\boxed\{", re.IGNORECASE)


def problem_prompt(skill: str, persona: str, constraints: list[str] = (), example: str = "") -> str:
    return PROBLEM[skill].format(persona=persona, constraints="; ".join(constraints), example=example)


def solution_prompt(skill: str, problem: str) -> str:
    return SOLUTION[skill].format(problem=problem)


def extract_problem(skill: str, text: str) -> str:
    """The generated problem without its prefix (the code prefix keeps "Write a python function to")."""
    text = text.strip()
    prefix = PREFIX[skill]
    k = text.find(prefix)
    if k >= 0:
        text = text[k + len(prefix):].strip()
    return text


def answer_of(skill: str, solution: str) -> str | None:
    """The final answer of a math solution in the format its prompt asked for (None: none found)."""
    if skill == "grade_math":  # the last number on the last "####" line (GSM8K's answers are numbers)
        m = re.findall(r"####\s*([^\n]+)", solution)
        nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", m[-1]) if m else []
        return nums[-1].replace(",", "") if nums else None
    m = re.findall(r"final answer is\s*\$?(.+?)\$?\.?\s*(?:I hope it is correct|$)", solution, re.IGNORECASE)
    return m[-1].strip().strip("$").strip() if m else None
