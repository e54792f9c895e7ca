"""The report's `results` dict (described in `codepmp.evaluate.html`) declared as pydantic models.

The models only validate: the dict stays the interchange format (JSON on disk, the register stage's gate reads
it) and the page is rendered from the dict itself. Types are strict, as JSON has them: a string is no number.
A field the page can do without is optional here too, so a result that rendered before still renders; extra
keys are allowed and ignored. `first_problem` turns pydantic's error into one line naming the bad field's path
in `results`.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

DEFAULT_TITLE = "codepmp evaluation: PMP vs control"


class FieldProblem(ValueError):
    """A check across fields that knows which field, below the validated model, is wrong: `steps` lead there."""

    def __init__(self, steps: tuple[str | int, ...], what: str):
        super().__init__(what)
        self.steps = steps


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class _Part(BaseModel):
    """A part of the results: strict JSON types, and a part lacking required fields named as a whole ("needs
    mean, low and high"), which reads better than one error per missing field."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _has_required_fields(cls, data: Any) -> Any:
        required = [name for name, field in cls.model_fields.items() if field.is_required()]
        if not isinstance(data, dict):
            raise ValueError(f"must be a dict with {_listing(required)}" if required else "must be a dict")
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"needs {_listing(required)} (missing {', '.join(map(repr, missing))})")
        return data


class Interval(_Part):
    """An estimate with its bootstrap interval."""

    mean: float
    low: float
    high: float


class Difference(Interval):
    """Model `a` minus model `b`, paired bootstrap."""

    a: str
    b: str


class MetricEntry(_Part):
    """One table row: each model's interval and the paired difference of the first two."""

    items: int | None = None
    clusters: int | None = None
    level: float = 0.95
    strata: list[str | int] | None = None
    plumbing_check: bool = False
    models: dict[str, Interval] = Field(min_length=1)
    difference: Difference | None = None


class Curve(_Part):
    """Accuracy per N; `low` and `high` together draw a band."""

    mean: list[float | None]
    low: list[float] | None = None
    high: list[float] | None = None


class CurveDifference(_Part):
    """The rm strategy's paired difference per N."""

    a: str = "a"
    b: str = "b"
    mean: list[float]
    low: list[float]
    high: list[float]


class BestOfN(_Part):
    """A domain's best-of-N curves over the same N for every strategy."""

    n: list[int]
    problems: int | None = None
    trials: int | None = None
    level: float = 0.95
    plumbing_check: bool = False
    curves: dict[str, Curve]
    difference: CurveDifference | None = None

    @model_validator(mode="after")
    def _one_value_per_n(self) -> BestOfN:
        for label, curve in self.curves.items():
            for key in ("mean", "low", "high"):
                values = getattr(curve, key)
                if values is not None and len(values) != len(self.n):
                    raise FieldProblem(("curves", label, key), f"mean (and low/high, if given) must have one value "
                                                               f"per N ({len(self.n)}), not {len(values)}")
        if self.difference is not None:
            for key in ("mean", "low", "high"):
                values = getattr(self.difference, key)
                if len(values) != len(self.n):
                    raise FieldProblem(("difference", key), f"mean, low and high must have one value per N "
                                                            f"({len(self.n)}), not {len(values)}")
        return self


class DomainPart(_Part):
    """What one domain has of the report: table rows, best-of-N, or both."""

    metrics: dict[str, MetricEntry] | None = None
    best_of_n: BestOfN | None = None


class OverSeeds(_Part):
    """One value per finetuning seed and their summary (`codepmp.evaluate.sweep.spread_over_seeds`)."""

    seeds: list[int]
    values: list[float]
    mean: float
    min: float
    max: float
    std: float | None = None


class SweepEntry(Interval):
    """A model's dev accuracy at one sweep size, with the spread over seeds where there were several."""

    over_seeds: OverSeeds | None = None


class SweepDifference(SweepEntry):
    """Model `a` minus model `b` at one sweep size."""

    a: str | None = None
    b: str | None = None


def _sweep_cell_kind(value: Any) -> str:
    return "entry" if isinstance(value, dict) else "accuracy"


# A model's cell in a sweep row is a bare accuracy (null where a run is missing) or an entry; the tag keeps
# pydantic's errors to the kind the value is, rather than one error per kind it is not.
SweepCell = Annotated[Union[Annotated[float | None, Tag("accuracy")], Annotated[SweepEntry, Tag("entry")]],
                      Discriminator(_sweep_cell_kind)]


class SweepRow(_Part):
    """One size of the sample-efficiency sweep; every other key is a model's cell."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, SweepCell]

    pairs: int
    difference: SweepDifference | None = None


class Meta(_Part):
    """The page's header; every other key is a label shown with its value."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str | float]

    title: str = DEFAULT_TITLE
    plumbing_check: str | None = None


LossPoint = Annotated[list[float], Field(min_length=2, max_length=2)]


class Results(_Part):
    """The whole `results` dict."""

    meta: Meta | None = None
    domains: dict[str, DomainPart] = Field(default_factory=dict)
    sample_efficiency: list[SweepRow] | None = None
    loss_curves: dict[str, list[LossPoint]] | None = None


def _data_path(loc: tuple[str | int, ...], results: Any) -> str:
    """`results['domains']['gsm8k']...` for a pydantic error location. The location also names the union member
    it tried (a tag such as 'entry', a type such as 'str'), which is no step in the data: only steps found in
    `results` are kept."""
    node, steps = results, []
    for step in loc:
        in_dict = isinstance(node, dict) and step in node
        in_list = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if in_dict or in_list:
            node = node[step]
            steps.append(f"[{step!r}]")
    return "results" + "".join(steps)


def first_problem(error: ValidationError, results: Any) -> str:
    """The first problem pydantic found, as "results<path>: what is wrong"; the other errors at the same path
    (a value that fits no member of a union) are added to it."""
    problems: dict[str, list[str]] = {}
    for detail in error.errors(include_url=False):
        cause = (detail.get("ctx") or {}).get("error")
        steps = tuple(detail["loc"]) + (cause.steps if isinstance(cause, FieldProblem) else ())
        what = str(cause) if detail["type"] == "value_error" and cause is not None else detail["msg"]
        problems.setdefault(_data_path(steps, results), []).append(what[:1].lower() + what[1:])
    path, whats = next(iter(problems.items()))
    return f"{path}: {'; or '.join(dict.fromkeys(whats))}"
