#!/usr/bin/python
# Copyright: the wizard-runner authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module xivo.wizard.wizard_runner: carry out the XiVO wizard with wizard-runner."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wizard_runner
short_description: Carry out the XiVO wizard on an appliance with wizard-runner
version_added: 0.1.0
description:
  - Runs C(wizard-runner run) on the managed appliance. wizard-runner validates the wizard body,
    writes the seven system files all or nothing (C(/etc/hostname), C(/etc/hosts),
    C(/etc/mailname), C(/etc/resolv.conf), C(/etc/network/interfaces),
    C(/etc/postfix/main.cf), C(/etc/postfix/canonical)), then runs the scripts of
    C(/etc/xivo/wizard.d).
  - The task is C(changed) when a system file was written or a script ran, and not changed when
    every file was already up to date and no script ran. Once a run has run the scripts to
    success, they are not run again (see O(rerun_scripts)), so a playbook played again
    reports every later play unchanged.
  - The body goes to wizard-runner on its standard input, never on a command line nor in a file.
    Its C(admin_password) is masked in everything the module returns (whatever its type, and
    so is a value under a misspelled key such as C(admin_pasword)), and wizard-runner never
    stores, logs nor prints it.
  - A failure sets C(rc) to wizard-runner's exit code and says why in C(msg), naming the failed
    step, field or script, with the script's last output lines.
  - On the appliance itself (O(root=/)), a run makes the running system use the files it wrote
    (C(hostname), C(postmap), C(postfix reload), and with O(apply_network) C(ifdown) and
    C(ifup)), and those an earlier run wrote that it does not show yet (a host name, an
    interface's address). One of these that failed fails the task, still C(changed); C(msg)
    names it and why. What the admin still has to do by hand (a network change
    written but not applied, say) is an Ansible warning each and named in C(msg); so is each
    system file the run skipped and why (a symlink, without O(replace_symlinks)).
author:
  - The wizard-runner maintainers (!UNKNOWN)
requirements:
  - wizard-runner installed on the appliance (C(wizard-runner) on its E(PATH), or see
    O(executable)).
  - Root on the appliance (C(become=true)), unless O(root) is a tree the remote user can write.
attributes:
  check_mode:
    support: full
    description: Can run in check mode and return changed status prediction without modifying
      the target.
    details:
      - Runs C(wizard-runner run --dry-run), which renders the new system files and checks them
        with the Debian tools, and writes nothing (not even its log).
      - C(changed) is true when a system file would be written or a script would run.
      - Scripts cannot be previewed; RV(result.scripts) says which would run, and which would be
        skipped and why.
  diff_mode:
    support: full
    description: Returns details on what has changed (or possibly needs changing in check_mode),
      when in diff mode.
    details:
      - The unified diff of the system files, from the dry run. On a real run, the module makes
        the dry run first to get it, then the run.
  platform:
    platforms: debian
    description: Target OS/families that can be operated against.
    support: N/A
options:
  config:
    description:
      - The wizard body, as xivo-confd receives it on C(POST /1.1/wizard) (see the reference of
        the body in wizard-runner's README). wizard-runner validates it strictly - unknown keys
        and values of the wrong type are refused - so quote numbers such as C(number_start).
      - Its C(admin_password) never appears in the module's output, its log or its diff.
      - Mutually exclusive with O(config_file). With neither, wizard-runner repeats the last run
        with the body it saved (without the password).
    type: dict
  config_file:
    description:
      - A wizard body already on the appliance, as a JSON file.
    type: path
  handle_system_conf:
    description:
      - Write the system files (V(true)) or leave them untouched (V(false)); overrides the body's
        C(handle_system_conf). Unset, the body decides.
    type: bool
  run_scripts:
    description:
      - Run the scripts of C(/etc/xivo/wizard.d) after the system files (V(true)) or not
        (V(false)); overrides the body's C(run_scripts). Unset, the body decides.
    type: bool
  rerun_scripts:
    description:
      - Run the scripts even when a run on the appliance has run them to success.
      - Off by default, the scripts set the appliance up once. Once a run has run them to
        success (the result's C(scripts_completed_by); runs that leave the scripts alone
        since keep it, one whose scripts fail clears it), a later task (the same playbook
        played again, say) runs the system step only, as if O(run_scripts=false), and says so
        in RV(msg). O(resume) and O(from_script) ask for scripts explicitly and always run
        them.
    type: bool
    default: false
  resume:
    description:
      - Start the scripts at the one that failed in the last run; the ones before it are
        reported C(not_run).
    type: bool
    default: false
  from_script:
    description:
      - Start the scripts at this entry of C(/etc/xivo/wizard.d).
      - Mutually exclusive with O(resume).
    type: str
  timeout:
    description:
      - Seconds each script may take before it is stopped (wizard-runner's default is 600;
        V(0) for none). Unset on a rerun of the saved body (neither O(config) nor
        O(config_file)), the last run's.
    type: int
  user:
    description:
      - The user the scripts run as. Unset, wizard-runner's default, C(www-data) (on a rerun
        of the saved body, the last run's).
    type: str
  replace_symlinks:
    description:
      - Replace a system file that is a symlink (C(/etc/resolv.conf) under resolvconf or
        systemd-resolved) with a file (V(true)), or skip it (V(false)).
      - Unset, V(false); on a rerun of the saved body (neither O(config) nor O(config_file)),
        what the last run was told.
    type: bool
  apply_network:
    description:
      - Restart the interface when C(/etc/network/interfaces) changed, C(ifdown --force) as
        the old file configured it (a DHCP client is stopped), then C(ifup) from the new one.
        Off by default, since it can cut the connection Ansible runs over.
      - Unset, V(false); on a rerun of the saved body (neither O(config) nor O(config_file)),
        what the last run was told.
    type: bool
  root:
    description:
      - The tree every path of the run is under. V(/) is the appliance itself; another directory
        is a sandbox where nothing on the live system is touched.
    type: path
    default: /
  executable:
    description:
      - The wizard-runner command, a name looked up on E(PATH) and the sbin directories, or a
        path.
    type: str
    default: wizard-runner
notes:
  - Scripts cannot be undone nor previewed; a real run that runs them reports C(changed),
    since they ran. With O(run_scripts=true), that is the first run only, and any run after one
    whose scripts failed. Once a run has run them to success, later runs leave them alone
    (see O(rerun_scripts)) and report C(changed) only when a system file was written or a
    live follow-up ran.
  - A password that also appears elsewhere in the output is masked there too, as Ansible does
    for every C(no_log) value.
  - Another run holding the appliance's lock (exit code 75) fails the task with its own
    message; nothing was done, and running the task again later is safe.
"""

EXAMPLES = r"""
- name: Carry out the wizard, scripts included
  xivo.wizard.wizard_runner:
    config:
      admin_password: "{{ vault_wizard_admin_password }}"
      license: true
      timezone: Europe/Paris
      language: fr_FR
      entity_name: Acme Telecom
      network:
        hostname: "{{ inventory_hostname_short }}"
        domain: acme.example
        interface: eth0
        ip_address: "{{ wizard_ip_address }}"
        netmask: 255.255.255.0
        gateway: 192.168.50.1
        nameservers: [192.168.50.2, 9.9.9.9]
      context_internal:
        number_start: "1000"
        number_end: "1999"
    run_scripts: true
  become: true
  register: wizard

- name: Show what the run did
  ansible.builtin.debug:
    msg: "{{ wizard.run_id }}: {{ wizard.msg }}"

- name: Preview the system files only (also run with --check --diff)
  xivo.wizard.wizard_runner:
    config_file: /root/wizard.json
    run_scripts: false
  check_mode: true
  diff: true
  become: true

- name: Run the scripts again from the one that failed
  xivo.wizard.wizard_runner:
    resume: true
  become: true
"""

RETURN = r"""
msg:
  description: What the run did (or in check mode would do), or why it failed.
  returned: always
  type: str
  sample: "run 20261125T150602Z-2d2105ed: wrote /etc/hostname, /etc/hosts; ran 10-check-identity"
run_id:
  description: The id of the run (its log is C(/var/log/wizard-runner/<run_id>/)).
  returned: success, except in check mode; a run whose live follow-up failed
  type: str
  sample: 20261125T150602Z-2d2105ed
result:
  description:
    - wizard-runner's JSON result (C(wizard-runner run --json)), described in its README.
    - In check mode, the dry run's plan instead (C(dry_run=true)) without its diff, which is in
      C(diff.prepared) in diff mode.
    - When wizard-runner stopped before a run started (an invalid body, a held lock), the
      object it printed then, with C(status), C(exit_code), C(error) and C(problems).
  returned: when wizard-runner answered
  type: dict
  contains:
    status:
      description: C(succeeded), C(failed), C(interrupted) or C(error); absent in check mode.
      type: str
      returned: success, failure
      sample: succeeded
    changed:
      description: Whether a system file was (or would be) written or a script ran (would run).
      type: bool
      returned: success
      sample: true
    system_conf:
      description:
        - Each system file's action, C(written), C(unchanged), C(skipped) or C(restored), with
          the reason.
        - On the appliance itself, C(actions), the live follow-ups (C(name), C(command),
          C(status) C(succeeded), C(failed) or C(skipped), C(detail)), and C(pending), what
          the admin still has to do by hand.
      type: dict
      returned: success, except in check mode
      sample: {"handled": true, "files": [{"path": "/etc/hosts", "action": "written",
               "reason": null}]}
    files:
      description: In check mode, each system file's plan, C(write), C(unchanged) or C(skip),
        with the reason.
      type: list
      elements: dict
      returned: check mode
      sample: [{"path": "/etc/hosts", "plan": "write", "reason": null}]
    scripts:
      description:
        - Each entry of C(/etc/xivo/wizard.d) with its C(status), C(exit_code), C(output_tail)
          and C(reason).
        - In check mode, its C(action) instead, C(run), C(skip), C(fail) or C(not_run), with the
          reason.
      type: list
      elements: dict
      returned: success, failure
      sample: [{"name": "README", "action": "skip", "reason": "not executable (no execute bit)"}]
rc:
  description: wizard-runner's exit code (0 for a run whose live follow-up failed).
  returned: failure, when wizard-runner ran
  type: int
  sample: 65
problems:
  description: Every problem of an invalid body, each naming its field.
  returned: when the body is invalid (C(rc=65))
  type: list
  elements: str
  sample: ["network.gateway: 10.0.1.1 is not in 192.168.50.0/24"]
"""

import json
import os
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "config": {"type": "dict", "no_log": True},
    "config_file": {"type": "path"},
    "handle_system_conf": {"type": "bool"},
    "run_scripts": {"type": "bool"},
    "rerun_scripts": {"type": "bool", "default": False},
    "resume": {"type": "bool", "default": False},
    "from_script": {"type": "str"},
    "timeout": {"type": "int"},
    "user": {"type": "str"},
    "replace_symlinks": {"type": "bool"},
    "apply_network": {"type": "bool"},
    "root": {"type": "path", "default": "/"},
    "executable": {"type": "str", "default": "wizard-runner"},
}

# How many lines of a failed script's output the message quotes (the result has its last 4 KiB).
OUTPUT_LINES = 10

# What each exit code of wizard-runner means, for the task's message (its README, "Exit codes").
EXIT_MEANINGS = {
    2: "refused the options",
    66: "is missing what it reads (the body, wizard.d, the root's etc/)",
    70: "hit a bug",
    73: "could not apply the system files; the ones already replaced were restored",
    74: "could not read or write its own files (log, saved body, result, lock)",
    77: "lacks a privilege it needs or found wizard.d unsafe",
    129: "was stopped by SIGHUP",
    130: "was stopped by SIGINT",
    143: "was stopped by SIGTERM",
}


#: Keys whose values are secrets wherever they are in the body: admin_password, and one
#: misspelled (admin_pasword, admin_passwd, admin_pwd) or put where it does not belong.
_SECRET_KEY = re.compile(r"pass|pas+w|pwd|secret|token", re.IGNORECASE)


def _secrets(value: Any, secret: bool = False) -> list[str]:
    """Every scalar under a secret key of `value`, whatever its type (a list, a dict)."""
    if isinstance(value, dict):
        return [found for key, item in value.items()
                for found in _secrets(item, secret or bool(_SECRET_KEY.search(str(key))))]
    if isinstance(value, list):
        return [found for item in value for found in _secrets(item, secret)]
    text = "" if value is None or isinstance(value, bool) else str(value)
    return [text] if secret and text else []


def mask_secrets_only(module: AnsibleModule, body: dict[str, Any] | None) -> None:
    """Make the body's secrets (admin_password, whatever its type, and any value under a key
    that says it is one) the only values Ansible masks in what the module returns."""
    # `config` is no_log so that Ansible keeps the body out of the target's log (the "Invoked
    # with" line). That also masks every string of the body anywhere in the output - the host
    # name in the diff, "eth0" in a script's output - and the secrets are what must be.
    module.no_log_values.clear()
    module.no_log_values.update(_secrets(body or {}))


def find_executable(module: AnsibleModule, name: str) -> str:
    """The wizard-runner command to run, or a failure naming what was looked for."""
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        module.fail_json(msg=f"wizard-runner not found: {name} is not an executable file "
                             "(install wizard-runner on the appliance, or fix executable)")
    found = module.get_bin_path(name)
    if found is None:
        module.fail_json(msg=f"wizard-runner not found: no {name} on PATH nor in the sbin "
                             "directories (install wizard-runner on the appliance, or set "
                             "executable to its path)")
    return str(found)


def wizard_argv(executable: str, params: dict[str, Any], *, dry_run: bool) -> list[str]:
    """The command line of the run (or of its dry run) the task's options ask for."""
    argv = [executable, "run", "--json", "--log-format", "json", "--root", params["root"]]
    if params["config"] is not None:
        argv += ["--config", "-"]
    elif params["config_file"] is not None:
        argv += ["--config", params["config_file"]]
    if params["handle_system_conf"] is not None:
        argv.append("--system-conf" if params["handle_system_conf"] else "--no-system-conf")
    if params["run_scripts"] is not None:
        argv.append("--scripts" if params["run_scripts"] else "--no-scripts")
    if scripts_once(params):
        argv.append("--scripts-once")
    if params["resume"]:
        argv.append("--resume")
    if params["from_script"] is not None:
        argv += ["--from", params["from_script"]]
    if params["timeout"] is not None:
        argv += ["--timeout", str(params["timeout"])]
    if params["user"] is not None:
        argv += ["--user", params["user"]]
    # Unset: false, or on a rerun of the saved body what the last run was told.
    if params["replace_symlinks"] is not None:
        argv.append("--replace-symlinks" if params["replace_symlinks"] else
                    "--no-replace-symlinks")
    if params["apply_network"] is not None:
        argv.append("--apply-network" if params["apply_network"] else "--no-apply-network")
    if dry_run:
        argv.append("--dry-run")
    return argv


def call_wizard_runner(
    module: AnsibleModule, argv: list[str], body: dict[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    """Run wizard-runner with the body on its standard input; its exit code and JSON answer."""
    stdin = json.dumps(body) if body is not None else None
    # No expansion: a root or a script name with `$` or `~` is taken as written.
    try:
        rc, out, err = module.run_command(argv, data=stdin, expand_user_and_vars=False,
                                          handle_exceptions=False)
    except OSError as error:  # EPIPE: it ended without reading the body
        module.fail_json(msg=f"{argv[0]} could not be given the wizard body "
                             f"({error.strerror or error}): is it wizard-runner? (see "
                             "executable)")
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        tail = "\n".join(err.strip().splitlines()[-OUTPUT_LINES:]) or "(nothing on stderr)"
        module.fail_json(msg=f"{argv[0]} exited with {rc} without a JSON answer (is it "
                             f"wizard-runner? see executable): {tail}",
                         rc=rc, stdout=out, stderr=err)
    return rc, answer


def failed_script_message(answer: dict[str, Any]) -> str | None:
    """The failed script, why it failed and its last output lines, if a script failed."""
    for script in answer.get("scripts") or []:
        if script.get("status") in ("failed", "timed_out"):
            lines = (script.get("output_tail") or "").splitlines()[-OUTPUT_LINES:]
            output = "".join(f"\n  {line}" for line in lines) or " (none)"
            return (f"wizard-runner: script {script.get('name')} failed "
                    f"({script.get('reason') or script.get('status')}); last output:{output}")
    return None


def failure_message(rc: int, answer: dict[str, Any]) -> str:
    """Why the run failed, in one message naming the step, the field or the script."""
    error = answer.get("error") or "no reason given"
    if rc == 65:
        problems = answer.get("problems") or [error]
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        return f"wizard-runner: the wizard body is invalid ({count}): " + "; ".join(problems)
    if rc == 75:
        return ("wizard-runner: another run holds the lock on this appliance, so nothing was "
                f"done; run the task again once it has finished ({error})")
    if rc == 1:
        return failed_script_message(answer) or f"wizard-runner: the scripts step failed: {error}"
    if rc == 66 and error.startswith("no saved config"):
        saved = error.split(": pass --config", 1)[0]  # the command line's hint is not ours
        return f"wizard-runner has no body to run: set config or config_file ({saved})"
    meaning = EXIT_MEANINGS.get(rc, f"exited with {rc}")
    if rc == 77 and os.geteuid() != 0:
        meaning += " (not root: become: true?)"
    return f"wizard-runner {meaning}: {error}"


def labels(
    entries: list[dict[str, Any]], label: str, key: str, values: tuple[str, ...]
) -> list[str]:
    """The `label` (path or name) of each entry whose `key` is one of `values`."""
    return [str(entry.get(label)) for entry in entries if entry.get(key) in values]


# A script's statuses once it was started, whatever became of it.
STARTED = ("succeeded", "failed", "timed_out")


def run_changed(result: dict[str, Any]) -> bool:
    """Whether the run wrote a system file or started a script, as its result says."""
    if isinstance(result.get("changed"), bool):
        return bool(result["changed"])
    files = (result.get("system_conf") or {}).get("files") or []
    return bool(labels(files, "path", "action", ("written",)) or
                labels(result.get("scripts") or [], "name", "status", STARTED))


def preview_changed(preview: dict[str, Any]) -> bool:
    """Whether the dry run says a system file would be written or a script would run."""
    if isinstance(preview.get("changed"), bool):
        return bool(preview["changed"])
    return bool(labels(preview.get("files") or [], "path", "plan", ("write",)) or
                labels(preview.get("scripts") or [], "name", "action", ("run",)))


# The reason of each file a run with handle_system_conf false leaves alone, as asked.
SKIPPED_AS_ASKED = "handle_system_conf=false"
# The reason of each file a failed system step did not get to write.
NOT_WRITTEN = "not written: "


def skipped_files(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Each system file the run left alone for a reason of its own (a symlink another program
    manages, say), with that reason; not those left alone as the task asked."""
    files = (result.get("system_conf") or {}).get("files") or []
    # "not written: ..." is a failed step's: the task's failure says why.
    return [(str(entry.get("path")), str(entry.get("reason") or "no reason given"))
            for entry in files if entry.get("action") == "skipped" and
            entry.get("reason") != SKIPPED_AS_ASKED and
            not str(entry.get("reason")).startswith(NOT_WRITTEN)]


def pending_notes(result: dict[str, Any]) -> list[str]:
    """What the admin still has to do by hand after the run (a network change written but
    not applied live, say)."""
    return [str(note) for note in (result.get("system_conf") or {}).get("pending") or []]


def failed_follow_ups(result: dict[str, Any], failed: str = "failed") -> list[str]:
    """Each live follow-up of the run that failed (postfix reload, ifup, ...) and why."""
    actions = (result.get("system_conf") or {}).get("actions") or []
    return [f"the follow-up {action.get('name')} {failed}: "
            f"{action.get('detail') or 'no reason given'}"
            for action in actions if action.get("status") == "failed"]


def run_summary(result: dict[str, Any]) -> str:
    """One line: the files the run wrote and skipped, the scripts it ran, the live follow-ups
    that failed, and what is left to do by hand."""
    files = (result.get("system_conf") or {}).get("files") or []
    written = labels(files, "path", "action", ("written",))
    ran = labels(result.get("scripts") or [], "name", "status", STARTED)
    parts = [f"wrote {', '.join(written)}" if written else "no system file changed"]
    skipped = skipped_files(result)
    if skipped:
        parts.append(f"skipped {', '.join(path for path, _reason in skipped)} (see warnings)")
    parts.append(f"ran {', '.join(ran)}" if ran else "ran no script")
    follow_ups = failed_follow_ups(result)
    if follow_ups:
        parts.append("but " + "; ".join(follow_ups))
    pending = pending_notes(result)
    if pending:
        parts.append("still to do by hand: " + "; ".join(pending))
    return f"run {result.get('run_id')}: " + "; ".join(parts)


def warn_of_run(module: AnsibleModule, result: dict[str, Any]) -> None:
    """Show what the run leaves for the admin beside its work as Ansible warnings: its own
    warnings, each system file it skipped and why, each note of what is left to do by hand."""
    for warning in result.get("warnings") or ():  # beside the work: the log lost lines, say
        module.warn(str(warning))
    for path, reason in skipped_files(result):
        module.warn(f"{path} was not written: {reason}")
    for note in pending_notes(result):
        module.warn(f"still to do by hand: {note}")


def preview_summary(preview: dict[str, Any]) -> str:
    """One line: what the run would write, run and skip (and why)."""
    written = labels(preview.get("files") or [], "path", "plan", ("write",))
    parts = [f"would write {', '.join(written)}" if written else "no system file would change"]
    scripts = preview.get("scripts") or []
    for action in ("run", "fail", "skip", "not_run"):
        listed = ", ".join(
            str(entry.get("name")) + (f" ({entry['reason']})" if entry.get("reason") else "")
            for entry in scripts if entry.get("action") == action
        )
        if listed:
            parts.append(f"would {action.replace('_', ' ')} {listed}")
    if not scripts:
        parts.append("no script would run")
    follow_ups = [str(entry) for entry in preview.get("follow_ups") or []]
    if follow_ups:
        parts.append(f"would follow up live: {'; '.join(follow_ups)}")
    pending = [str(entry) for entry in preview.get("pending") or []]
    if pending:
        parts.append(f"would leave to do by hand: {'; '.join(pending)}")
    return "check mode: " + "; ".join(parts)


def fail(module: AnsibleModule, rc: int, answer: dict[str, Any], **extra: Any) -> None:
    """Fail the task with wizard-runner's exit code, the reason and its answer (and the
    follow-ups that failed too, if any)."""
    if rc == 65:
        extra["problems"] = answer.get("problems") or []
    also = "".join(f"; {failed}" for failed in failed_follow_ups(answer, "also failed"))
    module.fail_json(msg=failure_message(rc, answer) + also, rc=rc, result=answer, **extra)


def scripts_once(params: dict[str, Any]) -> bool:
    """Whether the run leaves the scripts alone once a run has run them to success (their set
    up is done: runs that left them alone since do not undo it): unless the task asks for them
    again (rerun_scripts, resume, from), or not at all."""
    return not (params["rerun_scripts"] or params["resume"] or
                params["from_script"] is not None or params["run_scripts"] is False)


def not_again(done: object) -> str:
    """What the message adds when the scripts ran to success in run `done` before: nothing
    when they did not."""
    if not isinstance(done, str):
        return ""
    return (f"; the scripts are not run again: run {done} ran them to success "
            "(rerun_scripts: true runs them again)")


def dry_run(module: AnsibleModule, executable: str, body: dict[str, Any] | None,
            params: dict[str, Any]) -> dict[str, Any]:
    """The dry run's plan and diff; a refused dry run fails the task (nothing was done)."""
    rc, preview = call_wizard_runner(module, wizard_argv(executable, params, dry_run=True), body)
    if rc != 0:
        fail(module, rc, preview)
    return preview


def main() -> None:
    """Run the dry run (check mode, diff mode) and the run the task asks for."""
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("config", "config_file"), ("resume", "from_script")],
        supports_check_mode=True,
    )
    params = module.params
    body = params["config"]
    mask_secrets_only(module, body)
    executable = find_executable(module, params["executable"])
    if module.check_mode:
        preview = dry_run(module, executable, body, params)
        plan = {key: value for key, value in preview.items() if key != "diff"}
        diff = {"diff": {"prepared": preview.get("diff") or ""}} if module._diff else {}
        module.exit_json(changed=preview_changed(preview),
                         msg=preview_summary(preview) + not_again(preview.get("scripts_done_by")),
                         result=plan, **diff)
    diff = {}
    if module._diff:
        # The run's result names the files it wrote, not their content: the diff comes from a
        # dry run just before (a run between the two by someone else would not be in it).
        diff = {"diff": {"prepared": dry_run(module, executable, body, params).get("diff")
                         or ""}}
    rc, result = call_wizard_runner(module, wizard_argv(executable, params, dry_run=False), body)
    warn_of_run(module, result)
    if rc != 0:
        fail(module, rc, result, changed=run_changed(result))
    done = result.get("scripts_completed_by") if result.get("scripts_already_done") else None
    answer: dict[str, Any] = {"changed": run_changed(result),
                              "msg": run_summary(result) + not_again(done),
                              "result": result, "run_id": result.get("run_id"), **diff}
    if failed_follow_ups(result):
        # The files are written, but the live system does not use them all (an interface
        # not brought up, postfix not reloaded): a task that said ok would hide it.
        module.fail_json(rc=rc, **answer)
    module.exit_json(**answer)


if __name__ == "__main__":
    main()
