"""Stop requests: RunInterrupted, held back in deferred sections, dropped while stopping."""

from __future__ import annotations

import array
import fcntl
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from tests.conftest import EXAMPLES, MANAGED, Reliability, seed_root, snapshot
from tests.helpers import USER, alive, signalled_while_loading, write_script
from wizard_runner.cli import main as cli_main
from wizard_runner.config import WizardConfig
from wizard_runner.errors import RunInterrupted
from wizard_runner.result import RunResult
from wizard_runner.signals import (
    deferred_stop_signals,
    ignored_stop_signals,
    install_stop_handlers,
    interruptible,
    pending_stop,
    run_stops,
    settle_stops,
    stop_here,
)

pytestmark = pytest.mark.usefixtures("restore_signals")
SCRIPT = Path(sys.executable).parent / "wizard-runner"
LAST_RUN = "var/lib/wizard-runner/last-run.json"


def deliver(signum: int) -> None:
    """Send the process a signal and let its handler run here."""
    os.kill(os.getpid(), signum)
    signal.sigtimedwait([], 0)


def test_a_stop_is_recorded_where_it_lands_and_raised_at_a_stop_point() -> None:
    """With the runner's handlers, SIGTERM is recorded, not thrown into the code running;
    the next stop point raises it as RunInterrupted, once."""
    install_stop_handlers()
    deliver(signal.SIGTERM)  # let the handler run
    assert pending_stop() == signal.SIGTERM
    with pytest.raises(RunInterrupted) as caught:
        stop_here()
    assert caught.value.exit_code == 143
    assert pending_stop() is None
    stop_here()  # raised once


def test_a_stop_while_a_class_is_built_is_not_an_internal_error() -> None:
    """A stop landing in `__set_name__` (a dataclass field, as a module loads) must not come
    out as Python's RuntimeError wrapping it: it is recorded and the class is built."""
    install_stop_handlers()

    class Landing:
        def __set_name__(self, owner: type, name: str) -> None:
            deliver(signal.SIGHUP)  # the handler runs here, inside __set_name__

    class Built:
        field = Landing()

    assert isinstance(Built.__dict__["field"], Landing)
    with pytest.raises(RunInterrupted) as caught, run_stops():
        pytest.fail("the run began")
    assert caught.value.signum == signal.SIGHUP


def test_an_interruptible_wait_is_cut_at_once() -> None:
    """Inside `interruptible` (a tool, a pause), even within a deferred section, a stop ends
    the wait where it lands; one recorded before is raised on entry."""
    install_stop_handlers()
    started = time.monotonic()
    with pytest.raises(RunInterrupted), deferred_stop_signals(), interruptible():
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        time.sleep(10)
    assert time.monotonic() - started < 5
    deliver(signal.SIGTERM)  # the stop is over: ignored
    assert pending_stop() is None
    install_stop_handlers()
    deliver(signal.SIGHUP)
    with pytest.raises(RunInterrupted) as caught, interruptible():
        pytest.fail("the wait began after a stop")
    assert caught.value.signum == signal.SIGHUP


def test_a_stop_after_a_run_is_recorded_for_the_next() -> None:
    """A run's settled outcome ignores later stops only while the run lasts: one that comes
    after it (between two of the daemon's runs) keeps the next run from starting."""
    install_stop_handlers()
    with run_stops():
        settle_stops()
        deliver(signal.SIGTERM)
        assert pending_stop() is None  # the outcome stands
    deliver(signal.SIGHUP)
    with pytest.raises(RunInterrupted) as caught, run_stops():
        pytest.fail("the next run began")
    assert caught.value.signum == signal.SIGHUP


def test_a_deferred_stop_comes_at_the_end_of_the_outermost_section() -> None:
    """Nested sections hold the request until the last one closes; it is raised once."""
    install_stop_handlers()
    reached = []
    with pytest.raises(RunInterrupted) as caught, deferred_stop_signals():
        with deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("inner")
        reached.append("outer")
    assert reached == ["inner", "outer"]
    assert caught.value.signum == signal.SIGINT


def test_a_foreign_handler_is_swapped_for_the_section() -> None:
    """Another handler (an embedding application's) still gets the signal, after the block."""
    seen: list[int] = []

    def theirs(signum: int, _frame: FrameType | None) -> None:
        seen.append(signum)

    signal.signal(signal.SIGTERM, theirs)
    with deferred_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == []
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is theirs


def test_a_stop_swallowed_by_a_finalizer_is_raised_when_the_run_arms() -> None:
    """A stop raised inside a finalizer that ran in an interruptible wait (where Python only
    prints it) is not lost: it is recorded again, and the next run raises it before it
    starts."""
    install_stop_handlers()

    class Finalized:
        def __del__(self) -> None:
            deliver(signal.SIGTERM)  # the handler runs here, inside the finalizer

    with interruptible():
        Finalized()  # collected at once: its RunInterrupted is swallowed
    assert pending_stop() == signal.SIGTERM
    install_stop_handlers()  # as each command does again after the console script did
    with pytest.raises(RunInterrupted) as caught, run_stops():
        pytest.fail("the run began")
    assert caught.value.signum == signal.SIGTERM
    assert pending_stop() is None
    with run_stops():  # raised once: the next run is not stopped by it again
        pass


def test_ignored_while_stopping() -> None:
    """A second Ctrl-C during the clean-up is dropped, and the handler comes back after."""
    install_stop_handlers()
    with ignored_stop_signals():
        os.kill(os.getpid(), signal.SIGINT)
    assert pending_stop() is None
    deliver(signal.SIGINT)
    with pytest.raises(RunInterrupted):
        stop_here()


@pytest.mark.processes
def test_a_command_after_a_run_in_the_same_process_is_stopped_as_the_first(
    sandbox: Path, tmp_path: Path
) -> None:
    """cli.main called again in one process (an embedding, a test): what the first command's
    run settled does not make the next one deaf to a stop (here while it waits on a FIFO)."""
    quiet = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    assert cli_main(["run", "--config", str(EXAMPLES / "wizard.json"), "--root", str(sandbox),
                     "--no-scripts"], **quiet) == 0, quiet["stderr"].getvalue()
    fifo = tmp_path / "body"
    os.mkfifo(fifo)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    code = cli_main(["validate", "--config", str(fifo)], **quiet)
    timer.join()
    assert code == 143


# A command's output, bigger than a pipe holds, written while nothing reads the pipe yet.
BIG_OUTPUT = textwrap.dedent("""\
    import sys
    from wizard_runner.signals import install_stop_handlers
    from wizard_runner.streams import SafeStream
    install_stop_handlers()
    SafeStream(sys.stdout).write("x" * 400_000 + "\\n")
    sys.stderr.write("ended\\n")
    """)


@pytest.mark.processes
def test_a_stop_during_a_blocked_write_loses_no_output_a_reader_takes() -> None:
    """SIGTERM while the output waits for a slow reader (a pipe full): the reader, reading
    a moment later, gets all of it (Python ends a big write short when a signal interrupts
    it, and drops the rest)."""
    with subprocess.Popen([sys.executable, "-c", BIG_OUTPUT], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as child:
        time.sleep(0.5)  # the pipe is full, the write blocked
        child.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        stdout, stderr = child.communicate(timeout=30)
    assert (child.returncode, stderr, len(stdout)) == (0, b"ended\n", 400_001)


@pytest.mark.processes
def test_a_stop_ends_a_command_whose_reader_does_not_read() -> None:
    """SIGTERM while the output waits for a reader that never reads: the stream is given up
    and the command ends (not a wait until someone reads, or SIGKILL)."""
    with subprocess.Popen([sys.executable, "-c", BIG_OUTPUT], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as child:
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = child.wait(timeout=30)  # the pipe is never read meanwhile
        waited = time.monotonic() - started
        stdout, stderr = child.communicate(timeout=30)
    assert (code, stderr) == (0, b"ended\n")
    assert waited < 10
    assert len(stdout) < 400_001


def pipe_filled(fd: int) -> bool:
    """Whether the pipe we read from is half full at least (its writer is about to block)."""
    held = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, held)
    return held[0] >= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) // 2


@pytest.mark.processes
def test_a_stopped_run_ends_though_its_summary_waits_on_a_reader(script_root: Path) -> None:
    """SIGTERM while a run's output fills a pipe nobody reads (`run ... 2>&1 | sleep`): the
    run is settled as interrupted, and its summary, still waiting on the reader, gives up a
    moment later: the command ends with 143."""
    root = seed_root(script_root)
    write_script(root / "etc/xivo/wizard.d", "30-chatty", "seq 1 20000; sleep 30")
    with subprocess.Popen([str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"),
                           "--root", str(root), "--scripts", "--user", USER],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while not pipe_filled(child.stdout.fileno()) and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=20)  # the pipe is never read meanwhile
    assert code == 143
    assert json.loads((root / "var/lib/wizard-runner/last-run.json").read_text())[
        "status"] == "interrupted"


# --- whole runs: a stop signal at every moment of the system step ---------------------------

# The child is the console script with every os-level file operation counted; at operation
# AT it sends itself the signal, as an admin's dropped SSH session or a `kill` would.
CHILD = textwrap.dedent("""\
    import atexit, os, sys
    at, signum, tally = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    count = 0

    def counted(function):
        def call(*args, **kwargs):
            global count
            count += 1
            if count == at:
                os.kill(os.getpid(), signum)
            return function(*args, **kwargs)
        return call

    for name in ("open", "write", "fsync", "rename", "unlink", "mkdir", "fchmod"):
        setattr(os, name, counted(getattr(os, name)))
    atexit.register(lambda: open(tally, "w").write(str(count)))
    sys.argv = ["wizard-runner", *sys.argv[4:]]
    from wizard_runner.entry import main
    sys.exit(main())
    """)


def step_word(step: int) -> str:
    """`one`, or `4th` for every fourth."""
    return "one" if step == 1 else f"{step}th"


def contents(root: Path) -> dict[str, bytes | None]:
    """Each managed file's bytes (None when missing)."""
    return {path: (root / path.lstrip("/")).read_bytes()
            if (root / path.lstrip("/")).is_file() else None for path in MANAGED}


def stopped_run(root: Path, at: int, signum: int) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI on `root`, signalled at file operation `at`; return it and the count."""
    tally = root.parent / f"{root.name}.count"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(at), str(signum), str(tally), "run", "--config",
         str(EXAMPLES / "wizard.json"), "--root", str(root), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return done, int(tally.read_text() or 0)


def before_our_code(code: int, stdout: str, stderr: str, signum: int) -> bool:
    """Whether the signal came before the console script installed its handlers (the
    interpreter's start-up and the imports that precede them): its default effect, killed or,
    for SIGINT, Python's KeyboardInterrupt (which those handlers never raise), and nothing was
    done. The window is ~15 ms on a quiet machine and grows on a loaded one."""
    return code == -signum and not stdout and (not stderr or "KeyboardInterrupt" in stderr)


def judge(root: Path, done: subprocess.CompletedProcess[str], signum: int,
          old: dict[str, bytes | None], new: dict[str, bytes | None]) -> list[str]:
    """What is wrong after one stopped run: files not all old or all new, a traceback, a
    result that the exit code contradicts, no JSON object on stdout."""
    problems = []
    now = contents(root)
    if before_our_code(done.returncode, done.stdout, done.stderr, signum):
        return [] if now == old else ["killed by the signal after it started work"]
    if now not in (old, new):
        mixed = [path for path in MANAGED if now[path] != new[path]]
        problems.append(f"files neither all old nor all new (old: {mixed})")
    if "Traceback" in done.stderr:
        problems.append("traceback")
    if done.returncode == -signum and (now != old or done.stdout or done.stderr):
        problems.append("killed by the signal after it started work")
    elif done.returncode not in {0, 128 + signum, -signum}:
        problems.append(f"exit {done.returncode}")
    stored = root / "var/lib/wizard-runner/last-run.json"
    if stored.exists() and json.loads(stored.read_text())["exit_code"] != done.returncode:
        problems.append("the stored result contradicts the exit code")
    if not stored.exists() and now != old:
        problems.append("files written but no result stored")
    if done.returncode == -signum:
        return problems  # in the interpreter's own first milliseconds: nothing was done
    try:
        printed = json.loads(done.stdout)
    except ValueError:
        problems.append("no JSON object on stdout")
    else:
        if printed["exit_code"] != done.returncode:
            problems.append("the printed result contradicts the exit code")
    return problems


@pytest.mark.processes
@pytest.mark.parametrize("step", [pytest.param(4, id="quick"),
                                  pytest.param(1, id="long", marks=[
                                      pytest.mark.long, pytest.mark.timeout(900)])])
def test_sighup_at_every_file_operation(
    tmp_path: Path, config: WizardConfig, reliability: Reliability, step: int
) -> None:
    """SIGHUP at each file operation of a run: the seven files change as a whole or not at
    all, the result matches the exit code (129, or 0 once the outcome was settled)."""
    count_root = seed_root(tmp_path / "count")
    _, operations = stopped_run(count_root, 0, signal.SIGHUP)
    assert operations > 60
    old = contents(seed_root(tmp_path / "old"))
    new = contents(count_root)
    failures: dict[int, list[str]] = {}
    trials = range(1, operations + 1, step)
    for at in trials:
        root = seed_root(tmp_path / f"at-{at}")
        done, _ = stopped_run(root, at, signal.SIGHUP)
        problems = judge(root, done, signal.SIGHUP, old, new)
        if problems:
            failures[at] = problems
        shutil.rmtree(root)
    reliability.record(area="signals", fault="SIGHUP during a run (SSH session dropped)",
                       injection=f"SIGHUP at every {step_word(step)} of the {operations} file "
                       "operations in turn", trials=len(trials), lost=len(failures),
                       outcome="files all old or all new; result and exit code agree (129)")
    assert failures == {}


@pytest.mark.processes
@pytest.mark.parametrize("trials", [pytest.param(15, id="quick"),
                                    pytest.param(120, id="long", marks=pytest.mark.long)])
def test_stop_signals_at_random_moments(
    tmp_path: Path, config: WizardConfig, reliability: Reliability, trials: int
) -> None:
    """SIGTERM, SIGINT or SIGHUP at a random moment of a whole CLI run, start-up included:
    one line, no traceback, the files as a whole, the result matching the exit code.

    From 30 ms on: before that the interpreter itself is starting (about 15 ms here), and a
    signal has Python's default effect (SIGINT prints Python's KeyboardInterrupt), nothing
    of the run having begun; the next test covers that window for SIGTERM and SIGHUP."""
    chooser = random.Random(20261205)  # noqa: S311 - reproducible moments, not secrets
    old = contents(seed_root(tmp_path / "old"))
    new_root = seed_root(tmp_path / "new")
    assert subprocess.run([str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"),
                           "--root", str(new_root)], capture_output=True, timeout=60,
                          check=False).returncode == 0
    new = contents(new_root)
    failures: dict[str, list[str]] = {}
    for trial in range(trials):
        signum = chooser.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
        delay = round(chooser.uniform(0.03, 0.5), 3)
        root = seed_root(tmp_path / f"trial-{trial}")
        child = subprocess.Popen([str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"),
                                  "--root", str(root), "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=60)
        done = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
        problems = judge(root, done, signum, old, new)
        if problems:
            problems.append(f"stderr ends: {stderr[-600:]!r}, stdout: {stdout[:400]!r}")
        started = '"run_started"' in stderr  # after that, stderr carries the run's log
        if done.returncode > 0 and not started and stderr.count("\n") != 1:
            problems.append(f"not one line on stderr: {stderr!r}")
        if problems:
            failures[f"{signal.Signals(signum).name} after {delay} s"] = problems
        shutil.rmtree(root)
    reliability.record(area="signals", fault="SIGTERM, SIGINT or SIGHUP at a random moment",
                       injection=f"a random stop signal 30-500 ms after start ({trials} seeded)",
                       trials=trials, lost=len(failures),
                       outcome="one line, no traceback; files as a whole; result = exit code")
    assert failures == {}




@pytest.mark.processes
@pytest.mark.parametrize(("module", "signum"), [("wizard_runner.runner", signal.SIGHUP),
                                                ("wizard_runner.preflight", signal.SIGTERM)])
def test_a_stop_while_modules_load_is_an_interruption(sandbox: Path, module: str,
                                                       signum: int) -> None:
    """A stop landing while the command's modules are built (in a dataclass field's
    `__set_name__`, where Python 3.11 wraps an exception in RuntimeError) ends the run before
    it starts, in one line: not an internal error."""
    before = snapshot(sandbox)
    done = subprocess.run([*signalled_while_loading(module, signum), "run", "--config",
                           str(EXAMPLES / "wizard.json"), "--root", str(sandbox), "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    name = signal.Signals(signum).name
    assert done.stderr == f"wizard-runner: interrupted by {name}; nothing was run\n"
    assert done.returncode == 128 + signum
    assert json.loads(done.stdout)["status"] == "interrupted"
    assert snapshot(sandbox) == before


# The console script, sent a signal as its own first imports begin.
IMPORTING = textwrap.dedent("""\
    import os, signal, sys
    signum = int(sys.argv[1])

    class Landing:
        def find_spec(self, name, path=None, target=None):
            if name == "wizard_runner.errors":  # one of the console script's own imports
                os.kill(os.getpid(), signum)
            return None

    sys.meta_path.insert(0, Landing())
    sys.argv = ["wizard-runner", *sys.argv[2:]]
    from wizard_runner.entry import console
    console()
    """)


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_while_the_console_script_loads_is_an_interruption(signum: int) -> None:
    """A stop as the console script's own modules load (SIGINT would raise KeyboardInterrupt
    there by default, the others end the process) is recorded from its first line: the
    command says it in one line, with the signal's exit code."""
    done = subprocess.run([sys.executable, "-c", IMPORTING, str(signum), "validate",
                           "--config", str(EXAMPLES / "wizard.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    name = signal.Signals(signum).name
    assert (done.returncode, done.stderr) == (
        128 + signum, f"wizard-runner: interrupted by {name}; nothing was run\n")


# The console script, with `status` replaced by a command that gets a stop as it ends.
FINISHING = textwrap.dedent("""\
    import os, signal, sys
    import wizard_runner.cli as cli
    code = int(sys.argv[1])

    def finishing(args, out, stdin, err):
        os.kill(os.getpid(), signal.SIGTERM)
        out.write("the command's output\\n")
        return code

    cli._COMMANDS["status"] = cli._COMMANDS["status"]._replace(handle=finishing)
    sys.argv = ["wizard-runner", "status"]
    from wizard_runner.entry import main
    sys.exit(main())
    """)


@pytest.mark.processes
@pytest.mark.parametrize("code", [0, 3])
def test_a_stop_too_late_to_cut_a_command_leaves_its_outcome(code: int) -> None:
    """A stop no point of the command acted on (it came as the command ended): the outcome
    printed stands, exit code included, and stderr says the stop came."""
    done = subprocess.run([sys.executable, "-c", FINISHING, str(code)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (
        code, "the command's output\n", "wizard-runner: interrupted by SIGTERM, too late to cut "
        "the command short: its outcome stands\n")


@pytest.mark.processes
@pytest.mark.parametrize("source", ["fifo", "-"])
def test_a_stop_cuts_the_wait_for_the_body(sandbox: Path, tmp_path: Path, source: str) -> None:
    """`--config` naming a FIFO nobody writes, or standard input nobody closes: a stop ends
    the wait in one line, nothing run."""
    fifo = tmp_path / "body"
    os.mkfifo(fifo)
    with subprocess.Popen([str(SCRIPT), "run", "--config", str(fifo) if source == "fifo" else "-",
                           "--root", str(sandbox)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        time.sleep(0.5)  # well into the wait
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    assert (child.returncode, stderr) == (143, "wizard-runner: interrupted by SIGTERM; nothing "
                                               "was run\n")


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_before_any_code_runs_does_nothing(sandbox: Path, signum: int) -> None:
    """A stop signal as the process starts: it ends by that signal or says so in one line;
    either way nothing under the root was touched."""
    before = snapshot(sandbox)
    child = subprocess.Popen([str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"),
                              "--root", str(sandbox)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode in {-signum, 128 + signum}
    assert "Traceback" not in stderr
    assert snapshot(sandbox) == before


# --- a scripts step stopped at random moments ---------------------------------------------

STEP_SCRIPTS = {
    "10-quick": "echo quick",
    "20-leave": "{marker} >/dev/null 2>&1 & echo left one running",
    "30-slow": "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.05; done",
    "40-last": "echo last",
}


@pytest.mark.processes
@pytest.mark.parametrize("trials", [pytest.param(12, id="quick"),
                                    pytest.param(100, id="long", marks=[
                                        pytest.mark.long, pytest.mark.timeout(900)])])
def test_stop_signals_at_random_moments_of_the_scripts_step(
    script_root: Path, reliability: Reliability, trials: int
) -> None:
    """SIGTERM, SIGINT or SIGHUP at a random moment of a scripts step: nothing left running,
    a valid result matching the exit code, the script it hit and the rest reported, no
    traceback."""
    chooser = random.Random(20261206)  # noqa: S311 - reproducible moments, not secrets
    marker = f"sleep 7{os.getpid() % 1000}1"
    wizard_d = script_root / "etc/xivo/wizard.d"
    for name, body in STEP_SCRIPTS.items():
        write_script(wizard_d, name, body.format(marker=marker))
    failures: dict[str, list[str]] = {}
    for _ in range(trials):
        signum = chooser.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
        delay = round(chooser.uniform(0.03, 0.8), 3)
        child = subprocess.Popen(
            [str(SCRIPT), "run", "--config", str(EXAMPLES / "wizard.json"), "--root",
             str(script_root), "--no-system-conf", "--scripts", "--user", USER, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=60)
        problems = step_problems(script_root, child.returncode, stdout, stderr, signum)
        if alive(marker):
            problems.append("a process the scripts started is still running")
            subprocess.run(["pkill", "-f", marker], check=False)
        if problems:
            failures[f"{signal.Signals(signum).name} after {delay} s"] = problems
    reliability.record(area="signals", fault="a stop signal during the scripts step",
                       injection=f"SIGTERM, SIGINT or SIGHUP 30-800 ms into a step of four "
                       f"scripts ({trials} seeded)", trials=trials, lost=len(failures),
                       outcome="nothing left running; result valid and = exit code")
    assert failures == {}


def step_problems(root: Path, code: int, stdout: str, stderr: str, signum: int) -> list[str]:
    """What is wrong after one stopped scripts step."""
    problems: list[str] = []
    if before_our_code(code, stdout, stderr, signum):
        return problems  # nothing was done
    if "Traceback" in stderr:
        problems.append("traceback")
    if code not in {0, 128 + signum}:
        problems.append(f"exit {code}")
    try:
        printed = json.loads(stdout)
    except ValueError:
        return [*problems, "no JSON object on stdout"]
    if printed["exit_code"] != code:
        problems.append("the printed result contradicts the exit code")
    if printed.get("run_id") is None:
        return problems  # stopped before the run began: nothing was run
    stored = RunResult.from_dict(json.loads((root / LAST_RUN).read_text()), "last-run.json")
    if stored.run_id != printed["run_id"] or stored.exit_code != code:
        problems.append("the stored result is not this run's, or contradicts the exit code")
    statuses = [script.status.value for script in stored.scripts]
    finished = (stored.error or "").endswith("every step had completed before it was acted on")
    if code != 0 and "not_run" not in statuses and statuses[-1:] != ["failed"] and \
            not finished:
        problems.append(f"stopped, but every script reported as run: {statuses}")
    if code == 0 and statuses != ["succeeded"] * len(STEP_SCRIPTS):
        problems.append(f"exit 0, but not every script succeeded: {statuses}")
    return problems
