# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Ansible module travis.worker.vagrant_vm: bring the machines of a Vagrant project to a state."""

DOCUMENTATION = r"""
---
module: vagrant_vm
short_description: Manage the state of the machines of a Vagrant project
version_added: "0.1.0"
description:
  - Reads C(vagrant status --machine-readable) first and acts only on the machines whose state differs
    from O(state), with one C(vagrant) command per action for all those machines.
  - Check mode runs only C(vagrant status) and predicts exactly which machines a real run would change.
  - With C(--diff) shows each machine's state before and after.
  - Runs C(vagrant) as the invoking user with C(LANG=C); honours O(vagrant_home) (else E(VAGRANT_HOME)).
  - Errors (vagrant missing, provider plugin missing, unknown machine, box not found, VirtualBox machine
    locked, disk full) fail with a message naming the machine and the remedy, plus rc and stderr.
author:
  - travis.worker developers (@travis-ci)
options:
  project_dir:
    description:
      - Directory holding the C(Vagrantfile).
    type: path
    required: true
  name:
    description:
      - Machine name or list of machine names, as defined in the C(Vagrantfile).
      - Omit to manage all machines of the C(Vagrantfile).
      - An unknown name fails before anything is changed.
    type: list
    elements: str
    aliases: [names]
  state:
    description:
      - V(running) brings machines up (C(vagrant up)) unless running.
      - V(halted) halts running (or saved/frozen/paused) machines and powers off VirtualBox VMs in
        V(gurumeditation); machines not created stay not created.
      - V(absent) destroys every machine that exists (C(vagrant destroy --force)).
      - V(provisioned) makes machines running and provisioned at least once, using Vagrant's own provision
        sentinel (C(.vagrant/machines/NAME/PROVIDER/action_provision)). Machines not running get
        C(vagrant up --provision), running ones that were never provisioned get C(vagrant provision).
      - V(reloaded) always runs C(vagrant reload) (like a service restart it always reports a change).
    type: str
    choices: [running, halted, absent, provisioned, reloaded]
    default: running
  provider:
    description:
      - Provider for machines brought up (C(vagrant up --provider)), for example V(virtualbox) or V(lxc).
      - Also used as the default provider when reading the status of machines not created yet.
    type: str
  provision:
    description:
      - For O(state=running) and O(state=reloaded), run the provisioners when a machine is brought up
        (V(true), C(--provision)) or never (V(false), C(--no-provision)).
      - Unset leaves Vagrant's default (provision on first creation only).
      - Machines already running are never touched by O(state=running).
      - Refused with any other O(state) (V(provisioned) always provisions).
    type: bool
  parallel:
    description:
      - Bring machines up (and destroy them) in parallel if the provider supports it
        (C(--parallel)/C(--no-parallel)). Unset leaves Vagrant's default.
      - Only for O(state=running), O(state=provisioned) and O(state=absent); refused with the others.
    type: bool
  timeout:
    description:
      - Maximum seconds for each C(vagrant) command (via coreutils C(timeout)); V(0) means no limit.
      - Must not be negative.
    type: int
    default: 0
  vagrant_home:
    description:
      - Vagrant's home directory (boxes, plugins) to use instead of E(VAGRANT_HOME) or C(~/.vagrant.d).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - travis.worker.attributes
notes:
  - Supports check mode and diff mode.
  - Machine states are the provider's own, for example V(running), V(poweroff), V(saved), V(aborted),
    V(not_created) (VirtualBox) or V(running), V(stopped), V(not_created) (LXC).
requirements:
  - vagrant >= 2.2 with the provider plugin in use
"""

EXAMPLES = r"""
- name: Bring all worker VMs up
  travis.worker.vagrant_vm:
    project_dir: /home/travis/worker
    state: running

- name: Halt worker-3 and worker-4
  travis.worker.vagrant_vm:
    project_dir: /home/travis/worker
    name: [worker-3, worker-4]
    state: halted

- name: Bring the base VM up with the LXC provider without provisioning
  travis.worker.vagrant_vm:
    project_dir: /home/travis/base
    name: base
    provider: lxc
    provision: false
    timeout: 900

- name: Make sure the base VM has been provisioned once
  travis.worker.vagrant_vm:
    project_dir: /home/travis/base
    name: base
    state: provisioned

- name: Destroy all machines of the project
  travis.worker.vagrant_vm:
    project_dir: /home/travis/worker
    state: absent
"""

RETURN = r"""
machines:
  description: State of the managed machines after the run (in check mode, the predicted state).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Machine name.
      type: str
      sample: worker-1
    state:
      description: Provider state.
      type: str
      sample: running
    provider:
      description: Provider name.
      type: str
      sample: virtualbox
before:
  description: State of the managed machines before the run, same shape as RV(machines).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "worker-1", "state": "poweroff", "provider": "virtualbox"}]
changed_machines:
  description: Names of the machines that were (in check mode, would be) changed.
  returned: always
  type: list
  elements: str
  sample: [worker-1]
commands:
  description: The vagrant argv lists that were run (in check mode, that would be run), in order.
  returned: always
  type: list
  elements: list
  sample: [["vagrant", "halt", "worker-1", "--machine-readable"]]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.travis.worker.plugins.module_utils.vagrant import (
    HALTED_STATE_BY_PROVIDER,
    NOT_CREATED,
    RUNNING_STATES,
    Machine,
    VagrantError,
    fail_from_error,
    runner_from_module,
)

# States `vagrant halt` changes (a saved or frozen machine still holds memory state). `gurumeditation` is a
# VirtualBox VM stopped by an internal error but still holding its session; Vagrant's ForcedHalt powers it
# off (plugins/providers/virtualbox/action/forced_halt.rb).
HALTABLE_STATES = frozenset({"running", "saved", "frozen", "paused", "gurumeditation"})
# Options that only some states use (provision: `vagrant up`/`reload`; parallel: `vagrant up`/`destroy`): set
# with another state they would be ignored silently, so they are refused.
STATE_OPTIONS = {"provision": ("running", "reloaded"), "parallel": ("running", "provisioned", "absent")}


def is_provisioned(project_dir: str, machine: Machine) -> bool:
    """True if Vagrant's provision sentinel for the machine's current id exists (Vagrant >= 1.5 format)."""
    data_dir = os.path.join(
        os.environ.get("VAGRANT_DOTFILE_PATH") or os.path.join(project_dir, ".vagrant"),
        "machines",
        machine.name,
        machine.provider,
    )
    try:
        with open(os.path.join(data_dir, "id"), encoding="utf-8") as handle:
            machine_id = handle.read().strip()
        with open(os.path.join(data_dir, "action_provision"), encoding="utf-8") as handle:
            sentinel = handle.read().strip()
    except OSError:
        return False
    return sentinel == f"1.5:{machine_id}"


def plan(state: str, machines: list, project_dir: str) -> list:
    """Return [(action, [machines])] in execution order; empty when nothing differs."""
    steps: dict = {}
    for m in machines:
        running = m.state in RUNNING_STATES
        action = None
        if state == "running" and not running:
            action = "up"
        elif state == "halted" and m.state in HALTABLE_STATES:
            action = "halt"
        elif state == "absent" and m.state != NOT_CREATED:
            action = "destroy"
        elif state == "provisioned":
            if not running:
                action = "up_provision"
            elif not is_provisioned(project_dir, m):
                action = "provision"
        elif state == "reloaded":
            action = "reload"
        if action:
            steps.setdefault(action, []).append(m)
    order = ("up", "up_provision", "provision", "halt", "reload", "destroy")
    return [(a, steps[a]) for a in order if a in steps]


def predicted_state(action: str, machine: Machine) -> str:
    if action == "halt":
        return HALTED_STATE_BY_PROVIDER.get(machine.provider, "poweroff")
    if action == "destroy":
        return NOT_CREATED
    return "running"


def diff_text(machines: list) -> str:
    return "".join(f"{m.name}: {m.state} ({m.provider})\n" for m in machines)


def select(module, all_machines: list, names) -> list:
    if not names:
        return all_machines
    known = {m.name: m for m in all_machines}
    unknown = [n for n in names if n not in known]
    if unknown:
        module.fail_json(
            msg=f"machine(s) {', '.join(unknown)} not defined in the Vagrantfile of "
            f"{module.params['project_dir']}; defined machines: {', '.join(known) or 'none'}. "
            "Fix 'name' or the Vagrantfile.",
            error_kind="unknown_machine",
            rc=None,
            stderr="",
        )
    return [known[n] for n in dict.fromkeys(names)]


def execute(runner, module, action: str, machines: list) -> list:
    names = [m.name for m in machines]
    p = module.params
    if action == "up":
        return runner.up(names, provider=p["provider"], provision=p["provision"], parallel=p["parallel"]).cmd
    if action == "up_provision":
        return runner.up(names, provider=p["provider"], provision=True, parallel=p["parallel"]).cmd
    if action == "provision":
        return runner.provision(names).cmd
    if action == "halt":
        return runner.halt(names).cmd
    if action == "reload":
        return runner.reload(names, provision=p["provision"]).cmd
    return runner.destroy(names, parallel=p["parallel"]).cmd


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path", "required": True},
            "name": {"type": "list", "elements": "str", "aliases": ["names"]},
            "state": {
                "type": "str",
                "default": "running",
                "choices": ["running", "halted", "absent", "provisioned", "reloaded"],
            },
            "provider": {"type": "str"},
            "provision": {"type": "bool"},
            "parallel": {"type": "bool"},
            "timeout": {"type": "int", "default": 0},
            "vagrant_home": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    for option, states in STATE_OPTIONS.items():
        if p[option] is not None and p["state"] not in states:
            module.fail_json(
                msg=f"{option} is not used with state={p['state']} (only with state={' or '.join(states)}); "
                f"remove it, or use one of those states",
                error_kind="bad_arguments",
            )
    if p["timeout"] < 0:
        module.fail_json(
            msg=f"timeout must be >= 0 seconds (0 means no limit), got {p['timeout']}",
            error_kind="bad_arguments",
        )
    project_dir = p["project_dir"]
    if not os.path.isfile(os.path.join(project_dir, "Vagrantfile")):
        module.fail_json(
            msg=f"no Vagrantfile in project_dir {project_dir}; check 'project_dir' (the Vagrantfile dir)",
            error_kind="no_vagrantfile",
            rc=None,
        )
    runner = runner_from_module(module, project_dir, p["vagrant_home"], p["timeout"])
    result: dict = {"changed": False, "before": [], "machines": [], "changed_machines": [], "commands": []}
    try:
        run(module, runner, result)
    except VagrantError as exc:
        try:
            names = [m["name"] for m in result["before"]]
            if names and not module.check_mode:
                result["machines"] = [m._asdict() for m in runner.status(names, provider=p["provider"])]
        except VagrantError:
            pass
        fail_from_error(module, exc, **{k: v for k, v in result.items() if k != "changed"})
    module.exit_json(**result)


def run(module, runner, result: dict) -> None:
    """Read the status, act on the machines that differ (or only plan, in check mode), fill ``result``."""
    p = module.params
    names = list(dict.fromkeys(p["name"] or []))
    try:
        # Only the named machines: another process (a worker resetting its VM) may be acting on the others.
        current = runner.status(names, provider=p["provider"])
    except VagrantError as exc:
        if not names or exc.kind != "unknown_machine":
            raise
        current = runner.status(provider=p["provider"])  # to name the machines that are defined
    before = select(module, current, names)
    result["before"] = [m._asdict() for m in before]
    steps = plan(p["state"], before, p["project_dir"])
    predicted = {m.name: m for m in before}
    for action, machines in steps:
        for m in machines:
            predicted[m.name] = m._replace(state=predicted_state(action, m))
    result["changed"] = bool(steps)
    result["changed_machines"] = list(dict.fromkeys(m.name for _action, ms in steps for m in ms))
    runner.dry_run = module.check_mode
    for action, machines in steps:
        result["commands"].append(execute(runner, module, action, machines))
    if module.check_mode or not steps:
        after = [predicted[m.name] for m in before]
    else:
        after = runner.status([m.name for m in before], provider=p["provider"])
    result["machines"] = [m._asdict() for m in after]
    if module._diff:
        result["diff"] = {"before": diff_text(before), "after": diff_text(after)}


if __name__ == "__main__":
    main()
