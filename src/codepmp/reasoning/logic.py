"""Multiple-choice logical reasoning: LogiQA 2.0 and ReClor items, their prompts and option pairs.

Public API:
    LogicItem(id, passage, question, options, answer, types)   answer: 0-based index of the right option
    read_logiqa2(path) -> list[LogicItem]        official LogiQA 2.0 JSON lines
    load_logiqa2(data_dir, split) -> list[LogicItem]   reads `{data_dir}/logiqa2/{split}.jsonl`
    read_reclor(path, require_label=True) -> list[LogicItem]   official ReClor JSON array
    logic_question(item) -> str                  passage, question and lettered options as one question
    logic_prompt(item) -> str                    that question in the paper's format
    option_response(item, index) -> str          ' The answer is B. <option text>'
    logic_pairs(items) -> list[Pair]             right option (chosen) against each wrong one (rejected)
    logic_tasks(items) -> list[Task]             for sampling and best-of-N pools (gold: the option letter)
    unique_items(items) -> (list[LogicItem], IdStats)   one id per item: renamed reused ids, dropped repeats

Formats. LogiQA 2.0: one object a line with `id` (int), `answer` (int, 0-based), `text` (the passage),
`question`, `options` (list of strings) and `type` (reasoning-type name -> true). ReClor: one JSON array of
{context, question, answers, label, id_string}; its test split has no `label`, so `read_reclor` rejects an
unlabelled item unless `require_label=False`, which gives items with `answer=None`: they can be prompted and
scored, but pairs and tasks need the label and refuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from codepmp.errors import InputError
from codepmp.reasoning.answers import option_letter
from codepmp.reasoning.gsm8k import prompt
from codepmp.reasoning.jsonl import Record, read_json_array, read_jsonl
from codepmp.reasoning.tasks import Task
from codepmp.pairs import Pair

MAX_OPTIONS = 26


@dataclass(frozen=True)
class LogicItem:
    id: str
    passage: str
    question: str
    options: tuple[str, ...]
    answer: int | None
    """0-based index into `options`; None only for unlabelled ReClor test items."""
    types: tuple[str, ...] = ()
    """LogiQA 2.0 reasoning types (e.g. 'Categorical Reasoning')."""


@dataclass
class IdStats:
    """What `unique_items` changed; evaluation groups option rows by item id, so both would corrupt it."""

    renamed: int = 0
    """Items whose id an earlier, different item already had: they get '<id>#2', '<id>#3', ..."""
    dropped: int = 0
    """Items identical to an earlier one (passage, question, options and answer), whatever their ids: a repeat
    would count twice in option accuracy and give the same finetuning pairs twice."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def content_key(item: LogicItem) -> tuple:
    """What makes two items the same item (the id and reasoning-type tags do not)."""
    return item.passage, item.question, item.options, item.answer


def unique_items(items: Sequence[LogicItem]) -> tuple[list[LogicItem], IdStats]:
    """The items with each id used once, in file order. Upstream LogiQA 2.0 reuses ids for different items
    (shared/data logiqa2/dev.jsonl: ids 10882 and 10973), and `logic_dev` rows are grouped by id."""
    stats, seen, used, out = IdStats(), set(), set(), []
    for item in items:
        key = content_key(item)
        if key in seen:
            stats.dropped += 1
            continue
        seen.add(key)
        new_id, copy = item.id, 1
        while new_id in used:
            copy += 1
            new_id = f"{item.id}#{copy}"
        if new_id != item.id:
            stats.renamed += 1
            item = replace(item, id=new_id)
        used.add(new_id)
        out.append(item)
    return out, stats


def _options(record: Record, key: str) -> tuple[str, ...]:
    options = record.strings(key, min_items=2)
    if len(options) > MAX_OPTIONS:
        raise record.fail(f"field '{key}' has {len(options)} options; at most {MAX_OPTIONS} can be lettered")
    return tuple(options)


def _label(record: Record, key: str, n_options: int, optional: bool) -> int | None:
    label = record.get(key, int, optional=optional)
    if label is not None and not 0 <= label < n_options:
        raise record.fail(f"field '{key}' is {label}, outside 0..{n_options - 1} (the item has {n_options} options)")
    return label


def read_logiqa2(path: str | Path) -> list[LogicItem]:
    items = []
    for record in read_jsonl(path, "LogiQA2.0"):
        options = _options(record, "options")
        types = record.get("type", dict, optional=True) or {}
        items.append(LogicItem(str(record.get("id", (int, str))), record.get("text", str), record.get("question", str),
                               options, _label(record, "answer", len(options), optional=False),
                               tuple(name for name, on in types.items() if on)))
    return items


def load_logiqa2(data_dir: str | Path, split: str) -> list[LogicItem]:
    return read_logiqa2(Path(data_dir) / "logiqa2" / f"{split}.jsonl")


def read_reclor(path: str | Path, require_label: bool = True) -> list[LogicItem]:
    items = []
    for record in read_json_array(path, "ReClor"):
        options = _options(record, "answers")
        if require_label and record.row.get("label") is None:
            raise record.fail("has no 'label' (ReClor test files are unlabelled; read them with "
                              "require_label=False to score without gold)")
        items.append(LogicItem(record.get("id_string", str), record.get("context", str), record.get("question", str),
                               options, _label(record, "label", len(options), optional=True)))
    return items


def logic_question(item: LogicItem) -> str:
    options = "\n".join(f"{option_letter(i)}. {text}" for i, text in enumerate(item.options))
    return f"{item.passage}\n\nQuestion: {item.question}\n\nOptions:\n{options}"


def logic_prompt(item: LogicItem) -> str:
    return prompt(logic_question(item))


def option_response(item: LogicItem, index: int) -> str:
    """An answer naming one option by letter and text, which `option_index` reads back as `index`."""
    return f" The answer is {option_letter(index)}. {item.options[index]}"


def _labelled(item: LogicItem) -> int:
    if item.answer is None:
        raise InputError(f"logic item {item.id} has no label: pairs and tasks need the right option")
    return item.answer


def logic_pairs(items: Sequence[LogicItem]) -> list[Pair]:
    """Per item, the right option's response against each wrong option's: n_options - 1 pairs an item."""
    pairs = []
    for item in items:
        right = _labelled(item)
        pairs += [Pair(logic_prompt(item), option_response(item, right), option_response(item, wrong))
                  for wrong in range(len(item.options)) if wrong != right]
    return pairs


def logic_tasks(items: Sequence[LogicItem]) -> list[Task]:
    return [Task(item.id, logic_prompt(item), option_letter(_labelled(item)), "logic", len(item.options))
            for item in items]
