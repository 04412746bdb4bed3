"""Issue #11 section 4: no secret of the worker role's configuration (Redis password, app token, both vault
values as in inventories/production) appears in any Ansible output: a `--check --diff` run on a new box, a
real run with `--diff -v`, and a check and a real run that change the secrets. The role's config tasks run
for real against this host (connection local) into a temporary directory; the files must hold the secrets
(else the greps would prove nothing), the output must say what changed with the secrets masked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
VAULT_PASSWORD = "twt-vault-password"
REDIS_PASSWORD = "twt-Redis-Pass-7f3a9c"
TOKEN = "twt-App-Token-51d0e2"
NEW_REDIS_PASSWORD = "twt-Redis-Pass-NEW-88b1"
NEW_TOKEN = "twt-App-Token-NEW-0c4d"

PLAYBOOK = """
- name: The worker role's configuration tasks
  hosts: localhost
  gather_facts: false
  vars_files:
    - vault.yml
  vars:
    worker_user: root
    worker_group: root
    worker_restart_strategy: none
    worker_redis_url: "rediss://:{{ vault_redis_password }}@redis.example:6380/0"
    worker_travis_url: https://app.example
    worker_travis_username: worker
    worker_travis_token: "{{ vault_travis_token }}"
  tasks:
    - name: Write the runner configuration
      ansible.builtin.include_role:
        name: travis.worker.worker
        tasks_from: config.yml
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1", "USER": "root", "HOME": str(tmp_path)}  # fmt: skip


def _vault(tmp_path: Path, redis_password: str, token: str) -> None:
    """vault.yml with both secrets as inline !vault values (ansible-vault encrypt_string, as operators do)."""
    lines = []
    for name, value in (("vault_redis_password", redis_password), ("vault_travis_token", token)):
        proc = subprocess.run(
            [str(BIN / "ansible-vault"), "encrypt_string",
             "--vault-password-file", str(tmp_path / "vault.pass"), "--name", name, value],
            cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        lines.append(proc.stdout)
    (tmp_path / "vault.yml").write_text("---\n" + "\n".join(lines))


def _play(tmp_path: Path, conf: Path, *args: str) -> str:
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "--vault-password-file", str(tmp_path / "vault.pass"), str(tmp_path / "play.yml"),
            "-e", f"worker_config_dir={conf}",
            "-e", f"ansible_python_interpreter={sys.executable}", *args]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def _flat(out: str) -> str:
    """The output with the YAML callback's line folding and quote doubling undone (for the report lines)."""
    return re.sub(r"\s+", " ", out).replace("''", "'")


def _assert_no_secret(out: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in out, f"secret {secret[:8]}... printed:\n{out}"


@pytest.mark.skipif(
    os.geteuid() != 0, reason="writes files owned by root (chown) like the role does on a box"
)
def test_no_secret_in_check_diff_and_real_runs_and_changes_are_reported_masked(tmp_path: Path) -> None:
    (tmp_path / "vault.pass").write_text(VAULT_PASSWORD + "\n")
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    _vault(tmp_path, REDIS_PASSWORD, TOKEN)
    conf = tmp_path / "etc" / "travis-worker"
    secrets = (REDIS_PASSWORD, TOKEN, VAULT_PASSWORD)

    # New box, check mode: nothing written, the plan shown with the secrets masked.
    out = _play(tmp_path, conf, "--check", "--diff")
    _assert_no_secret(out, *secrets)
    assert not conf.exists()
    assert f"would write {conf}/worker.production.yml" in _flat(out), out
    assert "+ redis.url: rediss://:***@redis.example:6380/0" in _flat(out), out
    assert "+ travis.token: ***" in _flat(out), out

    # Real run, --diff and -v (task results shown): the files hold the secrets, the output does not.
    out = _play(tmp_path, conf, "--diff", "-v")
    _assert_no_secret(out, *secrets)
    assert REDIS_PASSWORD in (conf / "worker.production.yml").read_text()
    assert TOKEN in (conf / "worker.yml").read_text()
    assert f"wrote {conf}/worker.yml" in _flat(out), out

    # A rerun changes nothing and reports nothing.
    out = _play(tmp_path, conf, "--diff")
    assert "changed=0" in out and "wrote " not in out, out

    # New secrets and another queue: check then real run, both with --diff.
    _vault(tmp_path, NEW_REDIS_PASSWORD, NEW_TOKEN)
    for mode in (("--check", "--diff"), ("--diff", "-v")):
        out = _play(tmp_path, conf, *mode, "-e", "worker_queue=builds.other")
        _assert_no_secret(out, *secrets, NEW_REDIS_PASSWORD, NEW_TOKEN)
        assert "redis.url: changed (value not shown)" in _flat(out), out
        assert "travis.token: changed (value not shown)" in _flat(out), out
        assert "queue: builds -> builds.other" in _flat(out), out
    assert NEW_REDIS_PASSWORD in (conf / "worker.production.yml").read_text()
    assert NEW_TOKEN in (conf / "worker.yml").read_text()


@pytest.mark.skipif(
    os.geteuid() != 0, reason="writes files owned by root (chown) like the role does on a box"
)
def test_vault_values_reach_the_runner_as_plain_text(tmp_path: Path) -> None:
    """ansible-core 2.19's to_nice_yaml writes a vault-tagged value as `!vault |` ciphertext, which the
    runner's yaml.safe_load refuses: the token of inventories/production ("{{ vault_travis_token }}") must be
    written decrypted."""
    (tmp_path / "vault.pass").write_text(VAULT_PASSWORD + "\n")
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    _vault(tmp_path, REDIS_PASSWORD, TOKEN)
    conf = tmp_path / "etc" / "travis-worker"
    _play(tmp_path, conf)
    local = yaml.safe_load((conf / "worker.yml").read_text())
    assert local["travis"] == {"username": "worker", "token": TOKEN}
    env = yaml.safe_load((conf / "worker.production.yml").read_text())
    assert env["redis"]["url"] == f"rediss://:{REDIS_PASSWORD}@redis.example:6380/0"


SETTINGS_PLAYBOOK = """
- name: The maintenance playbooks' settings
  hosts: localhost
  gather_facts: false
  vars_files:
    - vault.yml
  vars:
    worker_redis_url: "rediss://:{{{{ vault_redis_password }}}}@redis.example:6380/0"
  tasks:
    - name: Resolve the settings
      ansible.builtin.include_tasks: {root}/playbooks/tasks/settings.yml
    - name: The URL, password included, is there for the tasks that need it
      ansible.builtin.assert:
        that: tw_redis_url == 'rediss://:' ~ vault_redis_password ~ '@redis.example:6380/0'
        quiet: true
"""


def test_maintenance_playbook_settings_do_not_print_the_redis_password(tmp_path: Path) -> None:
    """playbooks/tasks/settings.yml (workers.yml, rebuild.yml, reprovision.yml, scale.yml) resolves the Redis
    URL into a fact: with -v a set_fact prints its facts, so that one must be no_log."""
    (tmp_path / "vault.pass").write_text(VAULT_PASSWORD + "\n")
    (tmp_path / "play.yml").write_text(SETTINGS_PLAYBOOK.format(root=ROOT))
    _vault(tmp_path, REDIS_PASSWORD, TOKEN)
    out = _play(tmp_path, tmp_path / "unused", "-vv")
    _assert_no_secret(out, REDIS_PASSWORD, VAULT_PASSWORD)
    assert "tw_project_dir" in out, out  # -vv did print the other facts
