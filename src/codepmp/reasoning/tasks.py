"""One shape for a problem of any reasoning source, so sampling, pairing and pools need not know the source.

Public API:
    Task(id, prompt, gold, domain, n_options=0)   prompt in the paper's format; gold checked by `domain`
    Task.check(text) -> bool                       whether a solution reaches the gold answer
    Task.answer(text) -> str | None                the final answer a pool row records
    gsm8k_tasks(problems) -> list[Task]            from `gsm8k.load_problems`
    (math.math_tasks and logic.logic_tasks build the others)
"""

from __future__ import annotations

from dataclasses import dataclass

from codepmp.reasoning import gsm8k
from codepmp.reasoning.answers import DOMAINS, extract_answer, is_correct


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str
    """'Instruction:{question}\\n\\nResponse:' (the paper's format), used both to sample and in pairs."""
    gold: str
    """The gold final answer: a number (gsm8k), a LaTeX expression (math) or an option letter (logic)."""
    domain: str
    n_options: int = 0
    """How many options a logic item has (0 elsewhere)."""

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"task {self.id}: unknown domain '{self.domain}' (known: {', '.join(DOMAINS)})")

    def check(self, text: str) -> bool:
        return is_correct(self.domain, text, self.gold, self.n_options)

    def answer(self, text: str) -> str | None:
        return extract_answer(self.domain, text, self.n_options)


def gsm8k_tasks(problems: list[gsm8k.Problem]) -> list[Task]:
    return [Task(p.id, gsm8k.prompt(p.question), p.answer, "gsm8k") for p in problems]


def response(text: str) -> str:
    """A response as pairs and pools store it: after 'Response:' with one separating space, as the
    reference solutions in gsm8k.training_pairs are."""
    return text if text[:1].isspace() else " " + text
