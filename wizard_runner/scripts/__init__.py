"""The scripts step: discovery.py (wizard.d -> decisions), step.py (decisions -> outcomes),
watch.py (one script), output.py, spawner.py and helper.py (the helper, both ends),
containment.py (all the step started); docs/design.md says what each decides.

Stopping processes, the one way, is `wizard_runner.procs.stop`. The step's entry points are in
step.py (`run_scripts`, `ScriptsOptions`, `failure_message`); this package imports nothing on
its own, so that a run without scripts loads none of it.
"""
