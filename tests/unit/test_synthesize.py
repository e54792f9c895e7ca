import pytest

from codepmp.synthesize.prompts import description_prompt, pair_prompt
from codepmp.synthesize.run import is_empty
from codepmp.testing import write_tiny_model


def test_description_prompt_is_the_papers_and_truncates_code():
    prompt = description_prompt("x = 1\n" * 100, max_chars=12)
    assert prompt.startswith("Please generate a corresponding instruction based on this code snippet. In the "
                             "instruction you need to analyze the intent and function of this code snippet")
    assert prompt.endswith("#### Code snippet:\n```x = 1\nx = 1\n```\n\n#### Instructions:")


def test_pair_prompt_is_the_papers():
    assert pair_prompt("Adds numbers.") == (
        "### Instruction: Please read the following code description carefully and generate the actual code "
        "implementation based on this description. Please make sure the code is logical and readable.\n\n"
        "### Code Description:\nAdds numbers.\n\n### Response:")


@pytest.mark.parametrize("text, empty", [("", True), ("  \n", True), ("```python\n```", True), ("```\n\n```", True),
                                         ("```python\nx = 1\n```", False), ("def f(): pass", False)])
def test_is_empty(text, empty):
    assert is_empty(text) is empty


def test_batched_generation_matches_one_by_one(tmp_path):
    """Left padding and length sorting must not change what a prompt generates (greedy)."""
    from codepmp.synthesize.backend import Sampling, TransformersBackend

    model = str(write_tiny_model(tmp_path / "lm"))
    prompts = ["def add(a, b):", "x", "class Stack:\n    def push(self, item):", "for i in range(10):"]
    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    batched = TransformersBackend(model, batch_size=4).generate(prompts, greedy)
    single = TransformersBackend(model, batch_size=1).generate(prompts, greedy)
    assert batched == single and len(batched) == 4


def test_select_files_by_category_then_max_pairs():
    import pytest

    from codepmp.config import SynthesizeConfig
    from codepmp.errors import InputError
    from codepmp.synthesize.run import select_files

    rows = [{"id": str(i), "category": "engineering" if i % 2 else "other"} for i in range(6)]
    assert select_files(rows, SynthesizeConfig(max_pairs=0), "x") == rows
    picked = select_files(rows, SynthesizeConfig(max_pairs=2, categories=["engineering"]), "x")
    assert [r["id"] for r in picked] == ["1", "3"]
    with pytest.raises(InputError, match="crawl.classify.enabled"):
        select_files([{"id": "1", "category": None}], SynthesizeConfig(categories=["engineering"]), "x")
    with pytest.raises(InputError, match="no crawled file"):
        select_files(rows, SynthesizeConfig(categories=["tests"]), "x")
    with pytest.raises(InputError, match="no crawled files"):
        select_files([], SynthesizeConfig(), "x")
