"""The paper's prompts (CodePMP, arXiv 2410.02229, and its released code), verbatim."""

DESCRIPTION = (
    "Please generate a corresponding instruction based on this code snippet. In the instruction you need "
    "to analyze the intent and function of this code snippet (describe the operation the code performs and "
    "how it achieves its function).\n\n#### Code snippet:\n```{code}```\n\n#### Instructions:"
)

PAIR = (
    "### Instruction: Please read the following code description carefully and generate the actual code "
    "implementation based on this description. Please make sure the code is logical and readable.\n\n"
    "### Code Description:\n{description}\n\n### Response:"
)


def description_prompt(code: str, max_chars: int) -> str:
    return DESCRIPTION.format(code=code[:max_chars])


def pair_prompt(description: str) -> str:
    return PAIR.format(description=description)
