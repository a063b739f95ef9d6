"""The scripts step, split by what each part decides:

    discovery.py    the listing of wizard.d -> one decision per entry (run, skip, fail), in order
    step.py         the decisions -> one outcome per entry: the sequence, and judging each script
    watch.py        one running script: its output, deadline, the runner's stop, its helper
    output.py       a script's output -> log events (up to a budget), its log file, its tail
    spawner.py      the runner's side of the helper: start it, run one script, hear its end
    helper.py       the helper's program (already the run user) and the protocol of both ends
    containment.py  everything the step started, as one set: its own cgroup, or the fallback

Stopping processes, the one way, is `wizard_runner.procs.stop`.
"""

from __future__ import annotations

from wizard_runner.scripts.output import Progress
from wizard_runner.scripts.step import ScriptsOptions, failure_message, run_scripts, script_env

__all__ = ["Progress", "ScriptsOptions", "failure_message", "run_scripts", "script_env"]
