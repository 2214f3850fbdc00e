"""``infra.local.interrupt``: SIGTERM unwinds a command's ``main`` like SIGINT, its cleanup
runs whole even when a second signal comes meanwhile, and the exit code is 128 + the signal."""

import os
import signal

import pytest

from infra.local.interrupt import stops_cleanly


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unwinds_main_and_a_second_one_does_not_cut_its_cleanup_short(signum, capsys):
    cleaned = []

    @stops_cleanly("cmd")
    def main() -> int:
        try:
            os.kill(os.getpid(), signum)  # handled before the next statement
            raise AssertionError("the signal did not interrupt main")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second one, during the cleanup
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    assert main() == 128 + signum and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before
    said = capsys.readouterr().err
    assert "cmd: already stopping" in said
    assert f"cmd: stopped by {signal.Signals(signum).name}" in said


def test_main_returns_its_own_code_when_no_signal_comes():
    assert stops_cleanly("cmd")(lambda: 3)() == 3
