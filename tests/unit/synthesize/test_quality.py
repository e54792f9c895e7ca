"""Quality signals of generated code: whether it parses in its language."""

import pytest


@pytest.mark.parametrize("text, language, parses", [
    ("```python\ndef f():\n    return 1\n```\nThis returns one.", "python", True),
    ("def f(:\n    pass", "python", False),
    ("Here:\n```c\nint main(void) { return 0; }\n```", "c", True),
    ("int main(void { return 0; }", "c", False),
    ("fn main() { let x = 1; }", "rust", True),
    ("public class A { void f() { int x = 1; } }", "java", True),
    ("func main() {", "go", False),
    ("puts 'hi'", "ruby", None),
])
def test_parses_as_code_in_its_language(text, language, parses):
    from codepmp.synthesize.quality import parses as parses_as

    assert parses_as(text, language) is parses
