"""Interrupting a long run mid-way, as a kill would, through its progress callback (the
tests of resumable training and extraction)."""
from __future__ import annotations


class Stop(Exception):
    """Raised by the callbacks below; a test expects it with pytest.raises."""


def stop_after_steps(steps: int):
    """A progress callback that stops the run once it reports more than ``steps`` done."""
    def progress(done, total):
        if done > steps:
            raise Stop
    return progress


def stop_after_calls(calls: int):
    """A progress callback that stops the run at its (calls + 1)-th report (the first report
    of a resumed run says what was already done)."""
    seen = []

    def progress(done, total):
        seen.append(done)
        if len(seen) > calls:
            raise Stop
    return progress
