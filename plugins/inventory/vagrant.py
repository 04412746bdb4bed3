# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Inventory plugin travis.worker.vagrant: the machines of a Vagrant project as hosts."""

DOCUMENTATION = r"""
---
name: vagrant
short_description: Machines of a Vagrant project as inventory hosts
version_added: "0.1.0"
description:
  - Lists the machines of one Vagrant project (C(vagrant status --machine-readable)) as hosts, named like the
    machines, with their SSH details from C(vagrant ssh-config) (C(ansible_host), C(ansible_port),
    C(ansible_user), C(ansible_ssh_private_key_file)) for the running ones.
  - Adds the groups C(<group_prefix>state_<state>) and C(<group_prefix>provider_<provider>) and the host
    variables C(vagrant_state), C(vagrant_provider) and C(vagrant_project_dir).
  - The inventory file name must end with C(vagrant.yml) or C(vagrant.yaml).
author:
  - travis.worker developers (@travis-ci)
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as this plugin's.
    type: str
    required: true
    choices: [travis.worker.vagrant]
  project_dir:
    description: Directory holding the C(Vagrantfile).
    type: path
    required: true
  vagrant_home:
    description: Vagrant's home directory, instead of E(VAGRANT_HOME) or C(~/.vagrant.d).
    type: path
  running_only:
    description: List only running machines (the others cannot be reached anyway).
    type: bool
    default: false
  vagrant_binary:
    description: The C(vagrant) command to run.
    type: str
    default: vagrant
  group_prefix:
    description: Prefix of the state and provider group names.
    type: str
    default: vagrant_
  ssh_common_args:
    description:
      - Value of C(ansible_ssh_common_args) for running machines. Vagrant machines get new host keys when
        they are recreated, so host key checking is off by default, like C(vagrant ssh) does.
    type: str
    default: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes
requirements:
  - vagrant >= 2.2 on the controller, with the project's provider plugin
"""

EXAMPLES = r"""
# inventories/worker-vms.vagrant.yml
plugin: travis.worker.vagrant
project_dir: /home/travis/worker
running_only: true
keyed_groups:
  - key: vagrant_provider
    prefix: provider

# then: ansible -i inventories/worker-vms.vagrant.yml vagrant_state_running -m ansible.builtin.ping
"""

import os
import re
import subprocess

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.display import Display
from ansible_collections.travis.worker.plugins.module_utils.vagrant import (
    VagrantError,
    VagrantRunner,
)

display = Display()


def subprocess_executor(argv: list, cwd, env: dict) -> tuple:
    """Run argv (a list, no shell) on the controller and return (rc, stdout, stderr)."""
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=dict(os.environ, **env), capture_output=True, text=True, check=False
        )
    except OSError as exc:
        return 127, "", f"{argv[0]}: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def host_vars_from_ssh(config: dict, ssh_common_args: str) -> dict:
    """Ansible connection variables from one parsed ``vagrant ssh-config`` host block."""
    hostvars = {}
    if "hostname" in config:
        hostvars["ansible_host"] = config["hostname"]
    if "port" in config:
        hostvars["ansible_port"] = int(config["port"])
    if "user" in config:
        hostvars["ansible_user"] = config["user"]
    if "identityfile" in config:
        hostvars["ansible_ssh_private_key_file"] = config["identityfile"]
    if ssh_common_args:
        hostvars["ansible_ssh_common_args"] = ssh_common_args
    return hostvars


def group_name(prefix: str, kind: str, value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}{kind}_{value}")


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "travis.worker.vagrant"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("vagrant.yml", "vagrant.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        project_dir = self.get_option("project_dir")
        if not os.path.isfile(os.path.join(project_dir, "Vagrantfile")):
            raise AnsibleParserError(
                f"{path}: no Vagrantfile in project_dir {project_dir}; "
                "fix 'project_dir' in the inventory file"
            )
        runner = VagrantRunner(
            subprocess_executor,
            self.get_option("vagrant_binary"),
            project_dir=project_dir,
            vagrant_home=self.get_option("vagrant_home"),
        )
        try:
            machines = runner.status()
        except VagrantError as exc:
            raise AnsibleParserError(f"{path}: {exc.msg}\nstderr: {exc.stderr}") from None
        if self.get_option("running_only"):
            machines = [m for m in machines if m.state == "running"]
        ssh = self._ssh_configs(runner, [m.name for m in machines if m.state == "running"])
        prefix = self.get_option("group_prefix")
        strict = self.get_option("strict")
        for machine in machines:
            host = self.inventory.add_host(machine.name)
            hostvars = {
                "vagrant_state": machine.state,
                "vagrant_provider": machine.provider,
                "vagrant_project_dir": project_dir,
            }
            if machine.name in ssh:
                hostvars.update(host_vars_from_ssh(ssh[machine.name], self.get_option("ssh_common_args")))
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            for kind, value in (("state", machine.state), ("provider", machine.provider)):
                if value:
                    group = self.inventory.add_group(group_name(prefix, kind, value))
                    self.inventory.add_child(group, host)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)

    @staticmethod
    def _ssh_configs(runner: VagrantRunner, names: list) -> dict:
        """ssh-config of all running machines in one call; one by one if that fails (skipping the broken)."""
        if not names:
            return {}
        try:
            configs = runner.ssh_config(names)
            return {name: configs[name] for name in names if name in configs}
        except VagrantError:
            pass
        configs = {}
        for name in names:
            try:
                configs.update({k: v for k, v in runner.ssh_config([name]).items() if k == name})
            except VagrantError as exc:
                display.warning(f"travis.worker.vagrant: no SSH details for machine '{name}': {exc.msg}")
        return configs
