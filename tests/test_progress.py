"""Progress bars: shown on stderr, and silenced process-wide (worker threads too) by
``silenced()``, which ``spineplan plan --no-progress`` uses for every loop it runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from spineplan._progress import progress, progress_steps, silenced


def _drain(desc: str) -> int:
    return sum(progress(range(50), desc))


def test_bar_shown_then_silenced_on_worker_threads(monkeypatch, capsys):
    monkeypatch.setenv("SPINEPLAN_PROGRESS", "1")
    assert _drain("measuring") == 1225
    assert "measuring" in capsys.readouterr().err
    with silenced():
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(_drain, ["thread-a", "thread-b"])) == [1225, 1225]
        assert [n for n, _ in progress_steps([("read CT", 1), ("anatomy", 2)], "plan")] == ["read CT", "anatomy"]
    assert capsys.readouterr().err == ""
    with silenced(False):  # inactive: bars as usual
        _drain("again")
    assert "again" in capsys.readouterr().err


def test_steps_bar_names_the_step(monkeypatch, capsys):
    monkeypatch.setenv("SPINEPLAN_PROGRESS", "1")
    assert [i for _, i in progress_steps([("read CT", 1), ("anatomy", 2)], "spineplan plan")] == [1, 2]
    assert "spineplan plan" in capsys.readouterr().err


def test_environment_switch(monkeypatch, capsys):
    monkeypatch.setenv("SPINEPLAN_PROGRESS", "0")
    _drain("hidden")
    assert capsys.readouterr().err == ""
