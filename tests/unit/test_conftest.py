"""tests/conftest.py: under CI=true a skip fails the run (elsewhere it stays a skip);
a process holding the session's output or a thread still running at its end is named,
ended and fails the run, which ends instead of hanging. Each in a pytest of its own."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


SKIPS = ("import pytest\n\n"
         "def test_needs_a_tool():\n    pytest.skip('no libvirtd here')\n\n"
         "@pytest.mark.xfail(reason='known')\ndef test_known():\n    assert False\n")


def _run(tmp_path: Path, ci: str | None, test: str = SKIPS, *args: str
         ) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(test)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), *args, str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_a_skip_fails_under_ci(tmp_path):
    proc = _run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    assert "skipped under CI=true, which allows no skip: Skipped: no libvirtd here" \
        in proc.stdout
    assert "1 failed, 1 xfailed" in proc.stdout  # an expected failure stays one


def test_a_skip_is_a_skip_elsewhere(tmp_path):
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped, 1 xfailed" in proc.stdout


def test_a_process_left_holding_the_output_is_named_ended_and_fails_the_run(tmp_path):
    # without the guard this run would not end: the sleep keeps the output pipe open.
    # (-s: with pytest's own capture a child inherits a capture file, not the pipe)
    proc = _run(tmp_path, None, (
        "import subprocess\n\n"
        "def test_starts_a_daemon():\n"
        "    subprocess.Popen(['sleep', '299.5'], start_new_session=True)\n"), "-s")
    left = subprocess.run(["pkill", "-e", "-f", "^sleep 299.5$"], capture_output=True,
                          text=True)  # and this test leaves nothing either
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "holds the session's output: sleep 299.5" in proc.stderr
    assert left.stdout == ""  # the guard had ended it


def test_a_thread_left_running_is_named_and_the_run_ends(tmp_path):
    proc = _run(tmp_path, None, (
        "import threading, time\n\n"
        "def wait_for_a_machine():\n    time.sleep(300)\n\n"
        "def test_starts_a_thread():\n"
        "    threading.Thread(target=wait_for_a_machine, name='waiter').start()\n"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "thread waiter still runs" in proc.stderr and "wait_for_a_machine" in proc.stderr


def test_a_clean_session_passes(tmp_path):
    # a spawned process that ended leaves multiprocessing's resource tracker running
    # until the session's own exit: that helper is not a leak
    proc = _run(tmp_path, None, (
        "import multiprocessing\n\n"
        "def test_a_spawned_process_that_ends():\n"
        "    p = multiprocessing.get_context('spawn').Process(target=print)\n"
        "    p.start()\n    p.join()\n    assert p.exitcode == 0\n"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_child_process_left_running_is_named_ended_and_the_run_ends(tmp_path):
    # the shape of what held CI: a forked emulator that no SIGTERM ends, which
    # multiprocessing would join at exit, for ever
    proc = _run(tmp_path, None, (
        "import multiprocessing, signal, time\n\n"
        "def stubborn_emulator():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    time.sleep(300)\n\n"
        "def test_starts_a_child():\n"
        "    multiprocessing.get_context('fork').Process(target=stubborn_emulator,\n"
        "                                                daemon=True).start()\n"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "child process" in proc.stderr and "still runs" in proc.stderr, proc.stderr
