"""CodeClassifier: shape, order and batching invariants on a tiny random LM; ranking on the packaged SmolLM2."""

from __future__ import annotations

import pytest

from codepmp.config import ClassifyConfig
from codepmp.crawl.classify import ENGINEERING, OTHER, CodeClassifier
from codepmp.errors import ConfigError, InputError
from codepmp.models import cache_dir
from codepmp.testing import write_tiny_model

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "print('hello world')\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)\n" * 3,
    "for i in range(10):\n    print(i * i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "x = 1\n",
    "# exercise\n" + "n = int(input())\nprint(n * 2)\n" * 6,
]
LANGUAGES = ["python"] * len(TEXTS)

ENGINEERING_FILE = '''"""HTTP client for the billing service with retries and typed errors."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import requests

log = logging.getLogger(__name__)


class BillingError(Exception):
    """Raised when the billing API returns an error the caller can act on."""


@dataclass
class BillingClient:
    base_url: str
    token: str
    timeout: float = 10.0
    max_retries: int = 3

    def _request(self, method: str, path: str, **kwargs) -> dict:
        url = f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {self.token}"}
        for attempt in range(1, self.max_retries + 1):
            try:
                response = requests.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as exc:
                log.warning("billing: %s %s failed (%s), attempt %d", method, url, exc, attempt)
                time.sleep(2 ** attempt)
                continue
            if response.status_code >= 500:
                time.sleep(2 ** attempt)
                continue
            if response.status_code >= 400:
                raise BillingError(f"{method} {path}: {response.status_code} {response.text[:200]}")
            return response.json()
        raise BillingError(f"{method} {path}: gave up after {self.max_retries} attempts")

    def get_invoice(self, invoice_id: str) -> dict:
        return self._request("GET", f"/invoices/{invoice_id}")
'''

HOMEWORK_FILE = '''# Homework exercise 1
# Write a program that prints hello world

print("hello world")
print("Hello World")

# exercise 2: add two numbers
a = 5
b = 3
print(a + b)
'''

SMOLLM2 = "smollm2-135m-instruct"
needs_smollm2 = pytest.mark.skipif(not (cache_dir() / SMOLLM2 / "config.json").exists(),
                                   reason=f"{SMOLLM2} is not in the model cache (run `make test` or `make models`)")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("classify") / "lm"))


def _classifier(model: str, **overrides) -> CodeClassifier:
    return CodeClassifier(ClassifyConfig(model=model, max_chars=overrides.pop("max_chars", 200), **overrides))


def test_one_label_per_file_in_input_order(tiny_lm):
    clf = _classifier(tiny_lm, batch_size=3)
    labels = clf.classify(TEXTS, LANGUAGES)
    assert len(labels) == len(TEXTS)
    reversed_labels = clf.classify(TEXTS[::-1], LANGUAGES[::-1])
    assert [p for _, p in reversed_labels] == pytest.approx([p for _, p in labels][::-1], abs=1e-5)


def test_probabilities_and_categories_follow_threshold(tiny_lm):
    labels = _classifier(tiny_lm).classify(TEXTS, LANGUAGES)
    probs = [p for _, p in labels]
    assert all(0.0 <= p <= 1.0 for p in probs)
    threshold = sorted(probs)[len(probs) // 2]
    for category, p in _classifier(tiny_lm, threshold=threshold).classify(TEXTS, LANGUAGES):
        assert category == (ENGINEERING if p >= threshold else OTHER)


def test_batch_size_does_not_change_scores(tiny_lm):
    one = [p for _, p in _classifier(tiny_lm, batch_size=1).classify(TEXTS, LANGUAGES)]
    four = [p for _, p in _classifier(tiny_lm, batch_size=4).classify(TEXTS, LANGUAGES)]
    assert four == pytest.approx(one, abs=1e-5)


def test_deterministic(tiny_lm):
    clf = _classifier(tiny_lm, batch_size=4)
    assert clf.classify(TEXTS, LANGUAGES) == clf.classify(TEXTS, LANGUAGES)


def test_long_file_is_cut_to_the_context_window(tiny_lm):
    """The tiny model has 512 positions; 4000 characters of its byte-level BPE do not fit without cutting."""
    clf = _classifier(tiny_lm, max_chars=4000)
    [(category, p)] = clf.classify(["value = compute(alpha, beta) ** 3  # zq\n" * 200], ["python"])
    assert category in (ENGINEERING, OTHER) and 0.0 <= p <= 1.0


def test_languages_are_optional_but_must_match(tiny_lm):
    clf = _classifier(tiny_lm)
    assert len(clf.classify(TEXTS[:2])) == 2
    assert clf.classify([]) == []
    with pytest.raises(InputError, match="languages"):
        clf.classify(TEXTS[:2], ["python"])


def test_unloadable_model_is_one_line_input_error(tmp_path):
    with pytest.raises(InputError) as missing:
        _classifier(str(tmp_path / "nowhere"))
    assert "\n" not in str(missing.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputError) as bad:
        _classifier(str(broken))
    assert "cannot be loaded" in str(bad.value) and "\n" not in str(bad.value)


@needs_smollm2
def test_smollm2_ranks_engineering_code_above_homework():
    clf = _classifier(SMOLLM2, max_chars=1500, batch_size=2)
    (_, engineering), (_, homework) = clf.classify([ENGINEERING_FILE, HOMEWORK_FILE], ["python", "python"])
    assert engineering > homework + 0.1


def test_bad_batch_size_is_config_error(tiny_lm):
    with pytest.raises(ConfigError, match="batch_size"):
        _classifier(tiny_lm, batch_size=0)
