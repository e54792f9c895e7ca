from codepmp.progress import progress


def test_log_lines_when_stderr_is_not_a_terminal(capsys):
    bar = progress(range(3), desc="work", interval_s=0)
    bar.set_postfix(loss="0.5")
    assert list(bar) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("[work] 3/3 in")  # no repeated final line and lines[-1].endswith("(loss=0.5)")


def test_disabled_progress_is_silent_and_resumes_counting(capsys):
    assert list(progress(iter("ab"), desc="quiet", disable=True)) == ["a", "b"]
    assert capsys.readouterr().err == ""
    list(progress(range(2, 4), desc="resumed", total=4, initial=2, interval_s=1e9))
    assert capsys.readouterr().err.strip().startswith("[resumed] 4/4 in")
