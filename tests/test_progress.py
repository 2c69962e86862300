"""Progress display: a bar on a terminal, sparse lines in a log file, nothing when disabled."""

from __future__ import annotations

import io

from memdistill._progress import progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Log(io.StringIO):
    """A stream that is not a terminal, as a batch job's log file."""

    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_prints_a_line_at_most_every_interval_and_one_at_close():
    log, clock = Log(), FakeClock()
    with progress_bar(40, "distill", enabled=True, stream=log, interval=30, clock=clock) as bar:
        for _ in range(40):  # one step per second
            clock.now += 1
            bar.set_postfix(loss=f"{0.5:.3f}")
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert lines == ["distill: 30/40 it, 30 s, loss=0.500", "distill: 40/40 it, 40 s, loss=0.500"]
    assert "\r" not in log.getvalue()


def test_line_format_unknown_total_float_postfix_and_resumed_start():
    log, clock = Log(), FakeClock()
    bar = progress_bar(None, "evaluate", unit="step", stream=log, interval=5, clock=clock)
    clock.now += 4
    bar.update(3)
    assert log.getvalue() == ""  # not yet due
    clock.now += 1
    bar.set_postfix(acc=0.123456, run="1/2")
    assert log.getvalue() == ""  # a postfix alone prints nothing
    bar.update(2)
    assert log.getvalue() == "evaluate: 5 step, 5 s, acc=0.1235, run=1/2\n"
    bar.close()
    bar.close()  # a second close prints nothing more
    assert len(log.getvalue().splitlines()) == 2

    log = Log()
    bar = progress_bar(10, "distill", initial=7, stream=log, clock=clock)
    bar.update(1)
    bar.close()
    assert log.getvalue() == "distill: 8/10 it, 0 s\n"


def test_updates_after_close_print_nothing():
    log, clock = Log(), FakeClock()
    bar = progress_bar(3, "x", stream=log, interval=1, clock=clock)
    bar.close()
    clock.now += 100
    bar.update(1)
    bar.set_postfix(a=1)
    assert log.getvalue().splitlines() == ["x: 0/3 it, 0 s"]


def test_disabled_prints_nothing_anywhere():
    for stream in (Log(), Terminal()):
        clock = FakeClock()
        with progress_bar(5, "quiet", enabled=False, stream=stream, interval=0, clock=clock) as bar:
            for _ in range(5):
                clock.now += 60
                bar.update(1)
                bar.set_postfix(loss=1.0)
        assert stream.getvalue() == ""


def test_on_a_terminal_it_is_a_tqdm_bar():
    from tqdm import tqdm

    term = Terminal()
    with progress_bar(4, "train", unit="step", stream=term) as bar:
        assert isinstance(bar, tqdm)
        bar.update(2)
        bar.set_postfix(acc="0.9")
    out = term.getvalue()
    assert "train" in out and "2/4" in out and "acc=0.9" in out


def test_default_stream_is_stderr_at_call_time(capsys):
    bar = progress_bar(2, "job", interval=0)  # pytest's captured stderr is not a terminal
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("job: 2/2 it")
