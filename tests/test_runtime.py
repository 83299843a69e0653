"""Process-wide runtime settings: the torch thread count and progress that is a bar in a terminal, lines in a log."""

import io
import logging
import os

import pytest
import torch

from deeprec_env import runtime


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def progress_log(monkeypatch, caplog):
    """Progress messages logged while stderr is not a terminal; the captured stderr as `.stderr`."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    caplog.set_level(logging.INFO, logger="deeprec")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "deeprec"]

    messages.stderr = stderr
    return messages


def test_progress_in_a_log_is_a_few_lines_without_carriage_returns(progress_log):
    with runtime.progress(total=1000, desc="train x") as bar:
        for step in range(1, 1001):
            bar.update()
            if step % 100 == 0:
                bar.set_postfix(loss=f"{1 / step:.4f}")
    lines = progress_log()
    assert len(lines) == 10 and all(line.startswith("train x: ") for line in lines)
    assert lines[0] == "train x: 100/1000 (10%) (loss=0.0100)"
    assert lines[-1].startswith("train x: 1000/1000 in ") and lines[-1].endswith("s (loss=0.0010)")
    assert not any("\r" in line for line in lines) and progress_log.stderr.getvalue() == ""


def test_progress_over_an_iterable_yields_every_item_and_logs_at_most_eleven_lines(progress_log):
    assert list(runtime.progress(range(57), desc="evaluate")) == list(range(57))
    lines = progress_log()
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("evaluate: 57/57 in ")
    assert list(runtime.progress(iter("abc"), desc="unsized")) == ["a", "b", "c"]
    assert progress_log()[-1].startswith("unsized: 3 in ")  # no total: only the closing line


def test_disabled_progress_is_silent_and_a_terminal_gets_tqdm(progress_log, monkeypatch):
    with runtime.progress(total=10, desc="quiet", disable=True) as bar:
        bar.update(10)
    assert progress_log() == []
    monkeypatch.setattr("sys.stderr", _Terminal())
    from tqdm import tqdm

    bar = runtime.progress(total=3, desc="bar")
    assert isinstance(bar, tqdm)
    bar.close()


@pytest.fixture
def clean_threads(monkeypatch):
    """No thread variables set by the user or by an earlier configure_threads; torch's thread count restored."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "_set_here", set())
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_sets_torch_and_the_environment_and_is_idempotent(clean_threads):
    for _ in range(2):
        assert runtime.configure_threads(2) == 2
        assert torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert runtime.configure_threads(1) == 1 and os.environ["OMP_NUM_THREADS"] == "1"  # ours to change


def test_automatic_threads_are_half_the_cores_or_what_the_user_asked_for(clean_threads, monkeypatch):
    automatic = runtime.configure_threads(None)
    assert automatic == max(1, (os.cpu_count() or 1) // 2) >= 1 and torch.get_num_threads() == automatic
    assert runtime.configure_threads(0) == automatic

    monkeypatch.setattr(runtime, "_set_here", set())
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    assert runtime.configure_threads(None) == 3
    assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["TOKENIZERS_PARALLELISM"] == "true"  # the user's
