"""The paper's description and pair prompts, byte for byte."""

from codepmp.synthesize.prompts import description_prompt, pair_prompt


def test_description_prompt_is_the_papers_byte_for_byte_and_truncates_code():
    """The text of DESIGN.md (from the paper's released code), with the code cut at `max_chars`."""
    assert description_prompt("x = 1\n" * 100, max_chars=12) == (
        "Please generate a corresponding instruction based on this code snippet. In the instruction you need to "
        "analyze the intent and function of this code snippet (describe the operation the code performs and how "
        "it achieves its function).\n\n#### Code snippet:\n```x = 1\nx = 1\n```\n\n#### Instructions:")


def test_pair_prompt_is_the_papers():
    assert pair_prompt("Adds numbers.") == (
        "### Instruction: Please read the following code description carefully and generate the actual code "
        "implementation based on this description. Please make sure the code is logical and readable.\n\n"
        "### Code Description:\nAdds numbers.\n\n### Response:")
