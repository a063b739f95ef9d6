"""Measure wizard-runner side by side with run-parts and write BENCHMARKS.md.

    .venv/bin/python bench/run.py            # the full set (as root: scripts run as www-data)
    .venv/bin/python bench/run.py --quick    # fewer repetitions and smaller sizes, to try it

Wall times come from time.perf_counter, peak memory from the runner's VmHWM.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers import peak_rss_kib

if TYPE_CHECKING:
    from wizard_runner.config import WizardConfig
    from wizard_runner.runner import RunOptions

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(sys.executable).parent / "wizard-runner"
EXAMPLE = REPO / "examples" / "wizard.json"
SEED = REPO / "examples" / "debian-root"
USER = "www-data" if os.geteuid() == 0 else os.environ.get("USER", "nobody")


@dataclass(frozen=True)
class Stat:
    """Median, min and max of some samples (seconds unless said otherwise)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        """Summarise samples."""
        return cls(statistics.median(samples), min(samples), max(samples))

    def ms(self) -> str:
        """As milliseconds: `median (min-max)`."""
        return f"{self.median * 1e3:.1f} ({self.low * 1e3:.1f}-{self.high * 1e3:.1f})"

    def s(self) -> str:
        """As seconds: `median (min-max)`."""
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"


def timed(command: Sequence[str], **kwargs: object) -> float:
    """Wall time of one command, which must succeed."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - started


def fresh_root(base: Path, name: str, scripts: int = 0) -> Path:
    """A sandbox root: Debian's files and a wizard.d every user can reach, holding `scripts`
    trivial scripts (`exit 0`)."""
    root = base / name
    shutil.copytree(SEED, root)
    (root / "etc/xivo/wizard.d").mkdir(parents=True)
    for path in (root, root / "etc", root / "etc/xivo", root / "etc/xivo/wizard.d"):
        path.chmod(0o755)
    for index in range(scripts):
        script = root / f"etc/xivo/wizard.d/{index:04d}-noop"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    return root


def in_process(root: Path) -> tuple[WizardConfig, RunOptions]:
    """The example body and the options of a scripts-only run on `root`, for `execute`."""
    from wizard_runner.config import parse_config  # noqa: PLC0415
    from wizard_runner.runner import RunOptions  # noqa: PLC0415

    options = RunOptions(root=root, handle_system_conf=False, run_scripts=True, user=USER)
    return parse_config(EXAMPLE.read_bytes()), options


def slope(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope of (n, seconds)."""
    mean_n = statistics.mean(n for n, _ in points)
    mean_t = statistics.mean(t for _, t in points)
    top = sum((n - mean_n) * (t - mean_t) for n, t in points)
    bottom = sum((n - mean_n) ** 2 for n, _ in points)
    return top / bottom


def intercept(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares intercept of (n, seconds)."""
    mean_n = statistics.mean(n for n, _ in points)
    mean_t = statistics.mean(t for _, t in points)
    return mean_t - slope(points) * mean_n


def verdict(ratio: float) -> str:
    """Whether a per-script ratio meets 1.25x, or the 1.5x a simpler protocol is allowed."""
    return "met" if ratio <= 1.25 else "met (1.5x)" if ratio <= 1.5 else "MISSED"


def stack_floor(empty_run: list[str], reps: int) -> tuple[float, list[tuple[str, float]]]:
    """The run with an empty wizard.d, and the floor of the fixed stack which any run pays
    before wizard-runner's own code (the interpreter, then importing structlog and pydantic's
    model machinery and building a one-field model), timed in turn, `reps` rounds: medians."""
    model = ("import structlog, pydantic\n"
             "class One(pydantic.BaseModel):\n    x: int\nOne(x=1)")
    floors = [
        ("the interpreter (`python -c pass`)", "pass"),
        ("... importing structlog and pydantic, building a one-field model (the floor)", model),
        ("... the same with the collector and the exit as the console script has them: no "
         "collection while it starts, no tear-down at its exit (the floor the target is "
         "judged against)",
         f"import gc\ngc.disable()\n{model}\n"
         "import atexit, os, sys\natexit._run_exitfuncs()\nsys.stdout.flush()\nos._exit(0)"),
    ]
    ours: list[float] = []
    theirs: list[list[float]] = [[] for _ in floors]
    for _ in range(reps):
        ours.append(timed(empty_run))
        for times, (_, code) in zip(theirs, floors, strict=True):
            times.append(timed([sys.executable, "-c", code]))
    return Stat.of(ours).median, [(name, Stat.of(times).median)
                                  for times, (name, _) in zip(theirs, floors, strict=True)]


def overlap_slopes(base: Path, reps: int) -> tuple[float, float]:
    """Per-script cost in strict lock-step (the next script ordered only once the last is
    logged and recorded) and with the overlap the step keeps (ordered before that): slopes of
    in-process runs of 20 and 200 scripts, alternating, `reps` each."""
    sys.path.insert(0, str(REPO))
    from wizard_runner.config import parse_config  # noqa: PLC0415 - timed after import
    from wizard_runner.runner import RunOptions, execute  # noqa: PLC0415
    from wizard_runner.scripts.step import _Step  # noqa: PLC0415

    config = parse_config(EXAMPLE.read_bytes())
    roots = {count: fresh_root(base, f"overlap-{count}", count) for count in (20, 200)}
    order_ahead = _Step.order_ahead
    times: dict[tuple[bool, int], list[float]] = {}
    with open(os.devnull, "w") as sink:
        for _ in range(reps):
            for strict in (False, True):
                _Step.order_ahead = (lambda *_: None) if strict else order_ahead  # type: ignore[method-assign]
                try:
                    for count, root in roots.items():
                        started = time.perf_counter()
                        execute(config, RunOptions(root=root, handle_system_conf=False,
                                                   run_scripts=True, user=USER), stream=sink,
                                json_logs=True)
                        times.setdefault((strict, count), []).append(
                            time.perf_counter() - started)
                finally:
                    _Step.order_ahead = order_ahead  # type: ignore[method-assign]
    def points(in_lock_step: bool) -> list[tuple[int, float]]:
        return [(count, Stat.of(times[(in_lock_step, count)]).median) for count in roots]

    return slope(points(True)), slope(points(False))


def bench_scripts(base: Path, sizes: Sequence[int], reps: int) -> list[str]:
    """Per-script cost against run-parts, runs alternating."""
    runner_times: dict[int, Stat] = {}
    parts_times: dict[int, Stat] = {}
    commands: dict[int, list[str]] = {}
    for count in sizes:
        root = fresh_root(base, f"scripts-{count}", count)
        wizard_d = root / "etc/xivo/wizard.d"
        runner = [str(RUNNER), "run", "--config", str(EXAMPLE), "--root", str(root),
                  "--no-system-conf", "--scripts", "--user", USER, "--log-format", "json"]
        parts = ["run-parts", "--exit-on-error", str(wizard_d)]
        if os.geteuid() == 0:
            parts = ["runuser", "-u", USER, "--", *parts]
        commands[count] = runner
        ours, theirs = [], []
        for _ in range(reps):
            ours.append(timed(runner))
            theirs.append(timed(parts))
        runner_times[count], parts_times[count] = Stat.of(ours), Stat.of(theirs)
    fixed, floors = stack_floor(commands[0], 6 * reps)
    nonzero = [n for n in sizes if n]
    our_slope = slope([(n, runner_times[n].median) for n in nonzero])
    helper = intercept([(n, runner_times[n].median) for n in nonzero]) - runner_times[0].median
    their_slope = slope([(n, parts_times[n].median) for n in nonzero])
    their_fixed = parts_times[0].median
    lines = [
        "## 1. Per-script cost against run-parts",
        "",
        f"Trivial scripts (`#!/bin/sh` + `exit 0`), run as {USER}; wizard-runner with the system "
        "step skipped, against `run-parts --exit-on-error` under `runuser`, runs alternating, "
        f"{reps} each. Milliseconds, median (min-max).",
        "",
        "| scripts | wizard-runner | run-parts |",
        "| ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {runner_times[n].ms()} | {parts_times[n].ms()} |" for n in sizes]
    ratio = our_slope / their_slope if their_slope > 0 else float("inf")
    lock_step, overlapped = overlap_slopes(base, reps)
    gain = lock_step - overlapped
    lines += [
        "",
        f"- fixed cost (empty wizard.d, timed in turn with the floors below): "
        f"{fixed * 1e3:.1f} ms, against run-parts' "
        f"{their_fixed * 1e3:.1f} ms; above the floor of the fixed stack, its collector "
        f"and exit treated the same way (below): {(fixed - floors[-1][1]) * 1e3:.1f} ms (above the "
        f"plain floor: {(fixed - floors[-2][1]) * 1e3:.1f} ms). Target <= 30 ms above the floor: "
        f"{'met' if fixed - floors[-1][1] <= 0.030 else 'MISSED'}. The console script "
        "collects no garbage while it starts (`collector.py`) and does not tear the "
        "interpreter down as it exits (`entry.py`); the floor is given the same treatment, so "
        "that what that saves in the stack's share is not counted as ours.",
        f"- marginal cost per script (slope): {our_slope * 1e3:.2f} ms, against run-parts' "
        f"{their_slope * 1e3:.2f} ms ({ratio:.2f}x). Target <= 1.25x, <= 1.5x for a "
        f"simpler protocol: {verdict(ratio)}. The helper starts a script only when the "
        "runner orders it, which is once the runner has judged the last one a success and "
        "shown it: a round trip of two messages between one script's end and the next one's "
        "start. In strict lock-step the runner also logged and recorded the last one before "
        "that order, which has measured above 1.5x on this machine; the one overlap kept "
        "sends the order before that bookkeeping, which then runs while the next script "
        f"starts. It buys {gain * 1e3:.2f} ms per script ({lock_step * 1e3:.2f} ms per script "
        f"in lock-step against {overlapped * 1e3:.2f} ms, in-process, {reps} runs each of 20 "
        "and 200 scripts, alternating): strict lock-step would be about "
        f"{(our_slope + gain) / their_slope:.2f}x run-parts by this run's numbers.",
        f"- starting the helper that runs the scripts as {USER} (once per run that has a "
        f"script to run; the intercept of the non-empty runs over the empty one): "
        f"{helper * 1e3:.1f} ms.",
        "",
        "What the fixed cost is made of: the floor any run pays before wizard-runner's own "
        f"code, each timed in turn with the run with an empty wizard.d ({6 * reps} rounds, "
        "medians):",
        "",
        "| | ms |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value * 1e3:.1f} |" for name, value in floors]
    lines += [
        f"| wizard-runner's own share (its modules and model, log set-up, lock, saved config, "
        f"result, summary) | {(fixed - floors[-1][1]) * 1e3:.1f} |",
        "",
    ]
    return lines


def bench_output(base: Path, size: int, reps: int) -> list[str]:
    """A script writing `size` bytes in 100-byte lines: runner throughput and memory."""
    root = fresh_root(base, "output")
    line = "x" * 99
    body = f"yes '{line}' | head -c {size}"
    script = root / "etc/xivo/wizard.d/10-chatty"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    ours_runs, theirs_runs, peaks = [], [], []
    for _ in range(reps):
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(RUNNER), "run", "--config", str(EXAMPLE), "--root", str(root),
             "--no-system-conf", "--scripts", "--user", USER, "--timeout", "0",
             "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peaks.append(peak_rss_kib(process))
        ours_runs.append(time.perf_counter() - started)
        theirs_runs.append(timed(["sh", "-c", f"{body} | cat > /dev/null"]))
    ours, theirs = Stat.of(ours_runs), Stat.of(theirs_runs)
    peak = max(peaks)
    mib = size / 2**20
    share = theirs.median / ours.median
    return [
        "## 2. Output",
        "",
        f"A script writing {mib:.0f} MiB in 100-byte lines (`{body[:40]}...`), {reps} runs "
        "alternating with the same pipeline into `cat`; seconds, median (min-max).",
        "",
        "| | seconds | MiB/s (median) |",
        "| --- | ---: | ---: |",
        f"| wizard-runner (whole run, start-up included) | {ours.s()} | "
        f"{mib / ours.median:.0f} |",
        f"| the same into `cat > /dev/null` | {theirs.s()} | {mib / theirs.median:.0f} |",
        "",
        f"- runner peak RSS (highest of the runs): {peak / 1024:.0f} MiB. Target <= 64 MiB: "
        f"{'met' if peak <= 64 * 1024 else 'MISSED'}.",
        f"- throughput: {share:.0%} of `cat`'s. Target >= 50%: "
        f"{'met' if share >= 0.5 else 'MISSED'}.",
        "",
    ]


def bench_system_step(base: Path, reps: int) -> list[str]:
    """Render and apply the seven files in-process, warm; and an unchanged rerun."""
    sys.path.insert(0, str(REPO))
    from wizard_runner.config import parse_config  # noqa: PLC0415 - timed after import
    from wizard_runner.runner import RunOptions, execute  # noqa: PLC0415

    config = parse_config(EXAMPLE.read_bytes())
    with open(os.devnull, "w") as sink:
        def run(root: Path, tools: bool) -> float:
            started = time.perf_counter()
            result = execute(config, RunOptions(root=root, check_with_tools=tools,
                                                run_scripts=False), stream=sink)
            if result.exit_code != 0:
                raise RuntimeError(f"the system step failed: {result.error}")
            return time.perf_counter() - started

        run(fresh_root(base, "warm-up"), tools=False)
        first: dict[bool, list[float]] = {False: [], True: []}
        again: list[float] = []
        for index in range(reps):
            for tools in (False, True):
                root = fresh_root(base, f"system-{index}-{tools}")
                first[tools].append(run(root, tools))
                if not tools:
                    again.append(run(root, tools))
    apply, checked, rerun = Stat.of(first[False]), Stat.of(first[True]), Stat.of(again)
    return [
        "## 3. System step",
        "",
        f"The seven files rendered and applied on a tmp root, in-process and warm, {reps} runs "
        "(a whole run: lock, backup, atomic replaces, result, log). Milliseconds.",
        "",
        "| | ms |",
        "| --- | ---: |",
        f"| first run, rules only | {apply.ms()} |",
        f"| first run, checked by ifquery, postconf and postmap | {checked.ms()} |",
        f"| unchanged rerun | {rerun.ms()} |",
        "",
        f"- apply: target <= 30 ms: {'met' if apply.median <= 0.030 else 'MISSED'}.",
        f"- unchanged rerun: target <= 10 ms: {'met' if rerun.median <= 0.010 else 'MISSED'}.",
        "",
    ]


def bench_daemon(base: Path, requests: int) -> list[str]:
    """Submit-to-start latency through the spool."""
    from wizard_runner import api  # noqa: PLC0415
    from wizard_runner.layout import Layout  # noqa: PLC0415
    from wizard_runner.spool import reopen_spool  # noqa: PLC0415

    root = fresh_root(base, "daemon")
    body = json.loads(EXAMPLE.read_text())
    body["handle_system_conf"] = False
    daemon = subprocess.Popen([str(RUNNER), "serve", "--root", str(root), "--user", USER,
                               "--log-format", "json"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    latencies: list[float] = []
    try:
        incoming = root / "var/spool/wizard-runner/incoming"
        deadline = time.monotonic() + 30
        while not incoming.is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(requests):
            reopen_spool(Layout(root))  # each success closes the spool
            submitted = time.time()
            record = api.submit(body, root=root, wait=True, timeout=60)
            if not isinstance(record, dict) or record["status"] != "succeeded":
                raise RuntimeError(f"a request did not succeed: {record}")
            started = datetime.fromisoformat(record["result"]["started_at"]).timestamp()
            latencies.append(started - submitted)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return [
        "## 4. Daemon pickup",
        "",
        f"{requests} requests submitted one after the other through the spool; latency from "
        "the submit to the run's start.",
        "",
        f"- p50 {p50 * 1e3:.0f} ms (target <= 100 ms: {'met' if p50 <= 0.1 else 'MISSED'}), "
        f"p99 {p99 * 1e3:.0f} ms (target <= 300 ms: {'met' if p99 <= 0.3 else 'MISSED'}), "
        f"max {ordered[-1] * 1e3:.0f} ms.",
        "",
    ]


def bench_startup(base: Path, reps: int) -> list[str]:
    """Start-up of the commands that need no run."""
    root = fresh_root(base, "startup")
    commands: dict[str, list[str]] = {
        "wizard-runner --help": [str(RUNNER), "--help"],
        "wizard-runner validate": [str(RUNNER), "validate", "--config", str(EXAMPLE)],
        "wizard-runner list": [str(RUNNER), "list", "--root", str(root), "--user", USER],
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
    }
    lines = ["## 5. Start-up", "", "| command | ms |", "| --- | ---: |"]
    for name, command in commands.items():
        lines.append(f"| `{name}` | {Stat.of([timed(command) for _ in range(reps)]).ms()} |")
    return [*lines, ""]


def bench_profile(base: Path, count: int) -> list[str]:
    """Where the time of a scripts step goes: cProfile of an in-process run, top functions."""
    import cProfile  # noqa: PLC0415 - only for this step
    import io  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    from wizard_runner.runner import execute  # noqa: PLC0415

    config, options = in_process(fresh_root(base, "profile", count))
    profiler = cProfile.Profile()
    with open(os.devnull, "w") as sink:
        profiler.runcall(execute, config, options, stream=sink)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    table = [line for line in text.getvalue().splitlines() if line.strip()][-13:]
    return [
        "## Profile: where a scripts step spends its time",
        "",
        f"cProfile of one in-process run of {count} trivial scripts, the 12 functions with the "
        "most time of their own:",
        "",
        "```",
        *table,
        "```",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    reps = 3 if args.quick else 7
    steps: list[Callable[[Path], list[str]]] = [
        lambda base: bench_scripts(base, (0, 10, 100) if args.quick else (0, 10, 100, 500),
                                   reps),
        lambda base: bench_output(base, 2**27 if args.quick else 2**30, 1 if args.quick else 5),
        lambda base: bench_system_step(base, reps * 3),
        lambda base: bench_daemon(base, 30 if args.quick else 200),
        lambda base: bench_startup(base, reps * 2),
        lambda base: bench_profile(base, 50 if args.quick else 100),
    ]
    command = "  .venv/bin/python bench/run.py" + (" --quick" if args.quick else "")
    lines = [
        "# Benchmarks",
        "",
        "Generated by the command below on the machine it names; not written by hand.",
        "",
        f"- generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.system()} {platform.release()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, as uid {os.geteuid()}",
        f"- command: `{command.strip()}`",
        "",
    ]
    # Measure the package as an install leaves it, byte-compiled (pip compiles on install; an
    # editable checkout under PYTHONDONTWRITEBYTECODE would recompile it on every start).
    compileall.compile_dir(str(REPO / "wizard_runner"), quiet=1)
    lines.append("The package is byte-compiled first, as an install leaves it.")
    lines.append("")
    with tempfile.TemporaryDirectory(prefix="wizard-runner-bench-", dir="/tmp") as scratch:
        base = Path(scratch)
        base.chmod(0o755)
        for step in steps:
            lines += step(base)
            print(lines[-2] if len(lines) > 1 else "", file=sys.stderr)
    Path(args.output).write_text("\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
