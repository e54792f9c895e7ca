import json
import random
from pathlib import Path

import pytest

from codepmp.errors import InputError
from codepmp.reasoning.answers import gsm8k_equal, last_boxed, math_equal, option_index
from codepmp.reasoning.generic import read_preference_pairs
from codepmp.reasoning.gsm8k import Problem
from codepmp.reasoning.jsonl import read_jsonl
from codepmp.reasoning.logic import (
    LogicItem,
    load_logiqa2,
    logic_pairs,
    logic_prompt,
    logic_tasks,
    read_logiqa2,
    read_reclor,
)
from codepmp.reasoning.math import MathProblem, corrupt_math, load_math, math_corrupted_pairs, math_tasks, read_math
from codepmp.reasoning.pairing import pair_up
from codepmp.reasoning.pools import generated_pool, imported_pool
from codepmp.reasoning.sampled import label_solutions, pair_solutions, sample_solutions, sampled_pairs
from codepmp.reasoning.shepherd import read_shepherd, shepherd_pairs
from codepmp.reasoning.tasks import Task, gsm8k_tasks

SHARED = Path("/work/shared/data")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared reasoning data not present")


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- strict JSON-lines reading -------------------------------------------------------------------------------

def test_jsonl_errors_name_file_and_line(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_jsonl(tmp_path / "absent.jsonl", "MATH")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match=f"'{empty}' is empty"):
        read_jsonl(empty, "MATH")
    broken = write_lines(tmp_path / "broken.jsonl", [{"a": 1}, "", '{"a": 2', {"a": 3}])
    with pytest.raises(InputError, match=f"{broken} line 3: not valid JSON"):
        read_jsonl(broken, "MATH")
    listed = write_lines(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(InputError, match="line 1: expected a JSON object, got list"):
        read_jsonl(listed, "MATH")


def test_record_field_checks(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [{"n": True, "s": "x", "z": None}])
    record = read_jsonl(path, "test")[0]
    with pytest.raises(InputError, match=f"{path} line 1: field 'n' must be int, not bool"):
        record.get("n", int)
    with pytest.raises(InputError, match="line 1: missing field 'q'"):
        record.get("q", str)
    assert record.get("z", str, optional=True) is None
    assert record.get("s", str) == "x"


# --- MATH ----------------------------------------------------------------------------------------------------

def math_row(n: int, answer: str | None = "4", **extra) -> dict:
    row = {"problem": f"What is {n} + {n}?", "solution": f"We add: ${n}+{n} = \\boxed{{{2 * n}}}$.",
           "subject": "Prealgebra", "level": 1, "unique_id": f"made/{n}.json", **extra}
    if answer is not None:
        row["answer"] = answer
    return row


def test_read_math_rows_and_missing_answer(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [math_row(2), math_row(3, answer=None)])
    first, second = read_math(path)
    assert (first.id, first.question, first.answer, first.subject, first.level) == \
        ("made/2.json", "What is 2 + 2?", "4", "Prealgebra", 1)
    assert second.answer == "6"


@pytest.mark.parametrize("row, message", [
    ({"problem": "p", "solution": "no box"}, "line 2: no 'answer' field and no \\\\boxed"),
    ({"problem": "p", "solution": "s", "answer": 4}, "line 2: field 'answer' must be str, not int"),
    ({"solution": "s", "answer": "4"}, "line 2: missing field 'problem'"),
    ({"problem": "p", "solution": "s", "answer": "4", "level": "3"}, "line 2: field 'level' must be int"),
])
def test_read_math_bad_rows(tmp_path, row, message):
    path = write_lines(tmp_path / "m.jsonl", [math_row(1), row])
    with pytest.raises(InputError, match=message):
        read_math(path)


def test_math_corruption_is_checked_wrong():
    rng = random.Random(0)
    problems = [MathProblem("a", "Half of one?", r"It is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
                MathProblem("b", "Which day?", r"The day is $\boxed{\text{Sunday}}$.", r"\text{Sunday}"),
                MathProblem("c", "Which choice?", r"So $\boxed{\text{(C)}}$", r"\text{(C)}"),
                MathProblem("d", "Solve.", r"$x \in \boxed{[1, 3)}$", "[1, 3)")]
    for problem in problems:
        wrong = corrupt_math(problem, rng, [p.answer for p in problems])
        assert wrong is not None and wrong != problem.solution
        assert not math_equal(wrong, problem.answer) and math_equal(problem.solution, problem.answer)
    assert corrupt_math(MathProblem("e", "q", "no box", "3"), rng) is None


def test_math_corrupted_pairs_are_seeded():
    problems = [MathProblem(str(n), f"{n} + {n}?", f"$\\boxed{{{2 * n}}}$", str(2 * n)) for n in range(1, 6)]
    pairs = math_corrupted_pairs(problems, rejected_per_problem=2, seed=3)
    assert len(pairs) == 10 and pairs == math_corrupted_pairs(problems, rejected_per_problem=2, seed=3)
    assert pairs[0].prompt == "Instruction:1 + 1?\n\nResponse:" and pairs[0].chosen == " $\\boxed{2}$"
    assert all(not math_equal(p.rejected, last_boxed(p.chosen)) for p in pairs)


@needs_shared
def test_real_math_dev_loads_and_references_check_right():
    problems = load_math(SHARED, "dev")
    assert len(problems) == 200 and all(p.answer and p.question for p in problems)
    assert all(math_equal(p.solution, p.answer) for p in problems[:20])
    tasks = math_tasks(problems[:3])
    assert tasks[0].prompt.startswith("Instruction:") and tasks[0].domain == "math"


# --- LogiQA 2.0 and ReClor -----------------------------------------------------------------------------------

def logiqa_row(n: int, answer=2, **extra) -> dict:
    return {"id": n, "answer": answer, "text": f"Every glorp is a blick. Item {n} is a glorp.",
            "question": "Which must be true?", "options": ["It is a cat.", "It is a dog.", "It is a blick.",
                                                           "None of these."],
            "type": {"Categorical Reasoning": True, "Sufficient Conditional Reasoning": False}, **extra}


def test_read_logiqa2_made_up_rows(tmp_path):
    path = write_lines(tmp_path / "dev.jsonl", [logiqa_row(1), logiqa_row(2, answer=0)])
    first, second = read_logiqa2(path)
    assert (first.id, first.answer, first.options[2], first.types) == ("1", 2, "It is a blick.",
                                                                      ("Categorical Reasoning",))
    assert second.answer == 0


@pytest.mark.parametrize("row, message", [
    (logiqa_row(2, answer=4), "line 2: field 'answer' is 4, outside 0..3"),
    (logiqa_row(2, answer="C"), "line 2: field 'answer' must be int, not str"),
    (logiqa_row(2, options="A or B"), "line 2: field 'options' must be list, not str"),
    (logiqa_row(2, options=["only", 3]), "line 2: field 'options' must be a list of at least 2 strings"),
    ({k: v for k, v in logiqa_row(2).items() if k != "text"}, "line 2: missing field 'text'"),
])
def test_read_logiqa2_bad_rows(tmp_path, row, message):
    path = write_lines(tmp_path / "dev.jsonl", [logiqa_row(1), row])
    with pytest.raises(InputError, match=message):
        read_logiqa2(path)


def reclor_item(n: int, label: int | None = 1) -> dict:
    item = {"context": f"Made-up argument {n}: all swans seen so far are white.", "question": "The argument assumes",
            "answers": ["swans exist", "the future resembles the past", "birds fly", "nothing"],
            "id_string": f"made_{n}"}
    if label is not None:
        item["label"] = label
    return item


def test_read_reclor_made_up_items(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps([reclor_item(0), reclor_item(1, label=3)]))
    items = read_reclor(path)
    assert [(i.id, i.answer) for i in items] == [("made_0", 1), ("made_1", 3)]
    assert items[0].passage.startswith("Made-up argument 0")


def test_reclor_unlabelled_items(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([reclor_item(0), reclor_item(1, label=None)]))
    with pytest.raises(InputError, match=r"item \[1\]: has no 'label' .*require_label=False"):
        read_reclor(path)
    items = read_reclor(path, require_label=False)
    assert items[1].answer is None and "Made-up argument 1" in logic_prompt(items[1])
    with pytest.raises(InputError, match="logic item made_1 has no label"):
        logic_pairs(items)


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("[]", "is empty"),
    ('{"context": "x"}', "must hold a JSON array, not a dict"),
    ('[\n{"context": "x",\n]', "line 3: not valid JSON"),
    (json.dumps([reclor_item(0), {**reclor_item(1), "label": 7}]), r"item \[1\]: field 'label' is 7"),
    (json.dumps([reclor_item(0), "text"]), r"item \[1\]: expected a JSON object"),
])
def test_read_reclor_bad_files(tmp_path, text, message):
    path = tmp_path / "val.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_reclor(path)


def test_logic_pairs_and_tasks():
    item = LogicItem("x", "All glorps blick.", "What follows?", ("one", "two", "three", "four"), 2)
    pairs = logic_pairs([item])
    assert len(pairs) == 3 and {p.chosen for p in pairs} == {" The answer is C. three"}
    assert pairs[0].prompt == ("Instruction:All glorps blick.\n\nQuestion: What follows?\n\n"
                               "Options:\nA. one\nB. two\nC. three\nD. four\n\nResponse:")
    assert all(option_index(p.chosen, 4) == 2 and option_index(p.rejected, 4) != 2 for p in pairs)
    task = logic_tasks([item])[0]
    assert (task.gold, task.n_options) == ("C", 4) and task.check("Answer: (c)") and not task.check("B")


@needs_shared
def test_real_logiqa2_dev200_loads():
    items = load_logiqa2(SHARED, "dev200")
    assert len(items) == 200 and all(len(i.options) == 4 and 0 <= i.answer < 4 for i in items)
    assert len(logic_pairs(items[:5])) == 15


@needs_shared
def test_real_logiqa2_dev_reuses_ids_and_unique_items_repairs_them():
    from codepmp.reasoning.logic import content_key, unique_items

    raw = load_logiqa2(SHARED, "dev")
    assert len({i.id for i in raw}) < len(raw)  # upstream reuses ids for different items
    items, stats = unique_items(raw)
    assert len({i.id for i in items}) == len(items) == len(raw) - stats.dropped
    assert len({content_key(i) for i in items}) == len(items) and stats.renamed > 0
    assert all(i.id.split("#")[0] in {r.id for r in raw} for i in items)


# --- Math-Shepherd -------------------------------------------------------------------------------------------

def shepherd_row(question: str, steps: list[tuple[str, str]], task: str = "GSM8K") -> dict:
    body = "\n".join(f"Step {n}: {text} ки" for n, (text, _) in enumerate(steps, 1))
    labelled = body
    for _, tag in steps:
        labelled = labelled.replace("ки", tag, 1)
    return {"input": f"{question} {body}", "label": f"{question} {labelled}", "task": task}


def test_read_shepherd_groups_and_labels(tmp_path):
    q = "Tom has 3 red and 4 blue pens. How many pens?"
    path = write_lines(tmp_path / "shepherd.jsonl", [
        shepherd_row(q, [("3 + 4 = <<3+4=7>>7", "+"), ("The answer is: 7", "+")]),
        shepherd_row(q, [("3 + 4 = 8", "-"), ("The answer is: 8", "-")]),
        shepherd_row(q, [("3 * 4 = 12", "-"), ("The answer is: 12", "+")]),
        shepherd_row("What is $1+1$?", [("It is $\\boxed{2}$. The answer is: 2", "+")], task="MATH"),
    ])
    problems = read_shepherd(path)
    assert [(p.question, p.task, len(p.solutions)) for p in problems] == [(q, "GSM8K", 3),
                                                                           ("What is $1+1$?", "MATH", 1)]
    first = problems[0].solutions[0]
    assert first.text == "Step 1: 3 + 4 = 7\nStep 2: The answer is: 7" and first.correct
    assert [s.correct for s in problems[0].solutions] == [True, False, False]
    assert problems[0].solutions[2].step_labels == (False, True)
    pairs = shepherd_pairs(problems, max_pairs_per_problem=5, seed=0)
    assert len(pairs) == 2 and all(gsm8k_equal(p.chosen, "7") and not gsm8k_equal(p.rejected, "7") for p in pairs)
    assert pairs[0].prompt == f"Instruction:{q}\n\nResponse:"


@pytest.mark.parametrize("row, message", [
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: b +", "task": "GSM8K"}, "differs from 'input' before"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a ?", "task": "GSM8K"}, "'\\?' where step 1 needs"),
    ({"input": "Q? Step 1: a", "label": "Q? Step 1: a", "task": "GSM8K"}, "no step tag"),
    ({"input": "Q? a ки", "label": "Q? a +", "task": "GSM8K"}, "no 'Step 1:'"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a +", "task": 3}, "field 'task' must be str"),
])
def test_read_shepherd_bad_rows(tmp_path, row, message):
    good = shepherd_row("Q?", [("a", "+")])
    path = write_lines(tmp_path / "shepherd.jsonl", [good, row])
    with pytest.raises(InputError, match=f"line 2: .*{message}"):
        read_shepherd(path)


# --- generic preference pairs --------------------------------------------------------------------------------

def test_read_preference_pairs(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " b"}])
    assert [vars(p) for p in read_preference_pairs(path)] == [{"prompt": "p", "chosen": " a", "rejected": " b"}]
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " b"},
                                               {"prompt": "p", "chosen": ["a"], "rejected": " b"}])
    with pytest.raises(InputError, match=f"{bad} line 2: field 'chosen' must be str, not list"):
        read_preference_pairs(bad)


# --- sampled-policy pairs ------------------------------------------------------------------------------------

def gsm_tasks() -> list[Task]:
    return gsm8k_tasks([Problem("p1", "What is 2+3?", "2 + 3 = 5\n#### 5", "5"),
                        Problem("p2", "What is 2*3?", "2 * 3 = 6\n#### 6", "6"),
                        Problem("p3", "What is 9-1?", "9 - 1 = 8\n#### 8", "8")])


def test_pair_solutions_labels_and_counts():
    tasks = gsm_tasks()
    solutions = [["It is 5. #### 5", "#### 4", "The answer is 5", "#### 4", "  "],
                 ["#### 7", "#### 8"],
                 ["#### 8", "9 - 1 = 8. The answer is 8."]]
    labels = label_solutions(tasks, solutions)
    assert labels == [[True, False, True, False, False], [False, False], [True, True]]
    pairs, stats = pair_solutions(tasks, solutions, labels, max_pairs_per_problem=10, seed=0)
    assert stats.as_dict() == {"problems": 3, "samples": 9, "correct_samples": 4, "no_correct": 1,
                               "no_incorrect": 1, "paired": 1, "pairs": 2}
    assert {(p.chosen, p.rejected) for p in pairs} == {(" It is 5. #### 5", " #### 4"), (" The answer is 5", " #### 4")}
    assert all(p.prompt == "Instruction:What is 2+3?\n\nResponse:" for p in pairs)


def test_pair_up_spreads_and_caps():
    good, bad = [f"good {i}" for i in range(3)], [f"bad {i}" for i in range(5)]
    pairs = pair_up("q", good, bad, max_pairs=3, rng=random.Random(1))
    assert len({p.chosen for p in pairs}) == 3 and len({p.rejected for p in pairs}) == 3
    every = pair_up("q", good, bad, max_pairs=100, rng=random.Random(1))
    assert len({(p.chosen, p.rejected) for p in every}) == 15
    assert every == pair_up("q", good, bad, max_pairs=100, rng=random.Random(1))
    assert every != pair_up("q", good, bad, max_pairs=100, rng=random.Random(2))


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory):
    from codepmp.generate.backend import TransformersBackend
    from codepmp.testing import write_tiny_model

    return TransformersBackend(str(write_tiny_model(tmp_path_factory.mktemp("policy") / "lm")), batch_size=4)


def test_sampled_pairs_with_a_real_backend(tiny_backend):
    from codepmp.generate.backend import Sampling

    tasks = gsm_tasks()
    sampling = Sampling(max_new_tokens=6, temperature=1.0, seed=7)
    solutions = sample_solutions(tasks, tiny_backend, sampling, k=3)
    assert [len(s) for s in solutions] == [3, 3, 3]
    assert solutions == sample_solutions(tasks, tiny_backend, sampling, k=3)
    assert all(len(set(copies)) > 1 for copies in solutions), "the k copies of a prompt should differ"
    assert solutions != sample_solutions(tasks, tiny_backend, Sampling(max_new_tokens=6, temperature=1.0, seed=8), 3)
    pairs, stats = sampled_pairs(tasks, tiny_backend, sampling, k=3, max_pairs_per_problem=2, seed=0)
    assert stats.problems == 3 and stats.samples == 9
    assert stats.paired + stats.no_correct + stats.no_incorrect == stats.problems
    assert stats.pairs == len(pairs) <= 2 * stats.paired
    assert stats.correct_samples == sum(map(sum, label_solutions(tasks, solutions)))


# --- candidate pools -----------------------------------------------------------------------------------------

def test_generated_pool_rows(tiny_backend):
    from codepmp.generate.backend import Sampling

    tasks = gsm_tasks()[:2]
    rows = generated_pool(tasks, tiny_backend, Sampling(max_new_tokens=6, temperature=1.0, seed=1), n=4)
    assert len(rows) == 8 and [r["candidate"] for r in rows] == [0, 1, 2, 3] * 2
    assert set(rows[0]) == {"problem_id", "candidate", "prompt", "response", "answer", "gold", "correct", "domain"}
    assert all(r["domain"] == "gsm8k" and isinstance(r["correct"], bool) and r["response"].startswith(" ")
               for r in rows)
    assert [r["gold"] for r in rows] == ["5"] * 4 + ["6"] * 4


def test_imported_pool(tmp_path):
    tasks = gsm_tasks()
    path = write_lines(tmp_path / "pool.jsonl", [
        {"problem_id": "p1", "candidates": [{"text": "#### 5", "is_correct": True},
                                            {"text": "#### 4", "is_correct": False}]},
        {"problem_id": "other", "prompt": "Instruction:Q\n\nResponse:", "gold": "3",
         "candidates": [{"text": "The answer is 3", "is_correct": True}]},
    ])
    rows = imported_pool(path, "gsm8k", tasks)
    assert [(r["problem_id"], r["candidate"], r["answer"], r["gold"], r["correct"]) for r in rows] == \
        [("p1", 0, "5", "5", True), ("p1", 1, "4", "5", False), ("other", 0, "3", "3", True)]
    assert rows[0]["prompt"] == tasks[0].prompt and rows[0]["response"] == " #### 5"
    with pytest.raises(InputError, match="line 1: no 'prompt' for problem 'p1'"):
        imported_pool(path, "gsm8k")


def test_imported_pool_broken_third_line_names_it(tmp_path):
    good = {"problem_id": "a", "prompt": "P", "candidates": [{"text": "x", "is_correct": False}]}
    path = write_lines(tmp_path / "pool.jsonl", [good, {**good, "problem_id": "b"}, '{"problem_id": "c", "cand'])
    with pytest.raises(InputError, match=f"{path} line 3"):
        imported_pool(path, "math")


@pytest.mark.parametrize("row, message", [
    ({"problem_id": "b", "prompt": "P", "candidates": []}, "line 2: 'candidates' is empty"),
    ({"problem_id": "b", "prompt": "P", "candidates": [{"text": "x", "is_correct": "yes"}]},
     r"line 2: candidates\[0\] must be an object"),
    ({"problem_id": "a", "prompt": "P", "candidates": [{"text": "x", "is_correct": True}]},
     "line 2: problem 'a' already given at .* line 1"),
    ({"problem_id": 2, "prompt": "P", "candidates": [{"text": "x", "is_correct": True}]},
     "line 2: field 'problem_id' must be str"),
])
def test_imported_pool_bad_lines(tmp_path, row, message):
    good = {"problem_id": "a", "prompt": "P", "candidates": [{"text": "x", "is_correct": False}]}
    path = write_lines(tmp_path / "pool.jsonl", [good, row])
    with pytest.raises(InputError, match=message):
        imported_pool(path, "logic")
