"""The scripts step, split by what each part decides:

    discovery.py    the listing of wizard.d -> one decision per entry (run, skip, fail), in order
    step.py         the decisions -> one outcome per entry: the sequence, and judging each script
    watch.py        one script: the helper's word, its output, deadline, the runner's stop
    output.py       a script's output -> log events (up to a budget), its log file, its tail
    spawner.py      the runner's side of the helper: start it, order one script, hear it
    helper.py       the helper's program (already the run user) and the protocol of both ends
    containment.py  everything the step started, as one set: its own cgroup, or the fallback

Stopping processes, the one way, is `wizard_runner.procs.stop`. The step's entry points are in
step.py (`run_scripts`, `ScriptsOptions`, `failure_message`); this package imports nothing on
its own, so that a run without scripts loads none of it.
"""
