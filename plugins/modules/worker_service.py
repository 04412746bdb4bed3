#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT

from __future__ import annotations

DOCUMENTATION = r"""
---
module: worker_service
short_description: Start, stop, drain, restart or reload travis-worker runners, waiting for running jobs
version_added: 0.1.0
description:
  - Manages the systemd instances C(travis-worker@<vm>.service) of the build runner, one per worker VM.
  - C(stopped) and C(drained) send the graceful signal through systemd (C(systemctl stop --no-block), the
    runner gets C(SIGTERM) and finishes its current job) and then B(wait until the running job finishes),
    bounded by O(timeout). The wait reads the runner's Redis state (hash C(<namespace>:travis:vm_state),
    field C(<host>:<vm>), a JSON document with C(state) and C(job_id)) when the Python C(redis) library is
    importable on the target and the server answers; otherwise it falls back to the systemd unit state and
    says so in RV(state_source).
  - C(<host>) is the target's host name (Python's C(socket.gethostname()), the first part of the runner's
    worker id C(<host>:<pid>:<queue>)); the boxes of a fleet share one Redis and all name their VMs
    C(worker-1..N), so only this box's entries are read. An entry of the old form (field C(<vm>) alone,
    written by an earlier runner) is never read; the runner removes its own at start-up.
  - With O(force_after), a worker still running after that many seconds gets C(SIGQUIT) through
    C(systemctl kill); the runner then requeues its job and exits.
  - This replaces C(god stop workers) followed by C(ps aux | grep resque).
  - The unit must allow a long stop (C(TimeoutStopSec) at least O(timeout), or C(infinity)), otherwise systemd
    itself kills the runner before the job is done.
  - Every start (O(state=started), O(state=restarted), the start part of O(state=reloaded)) first runs
    C(systemctl reset-failed) on its units. systemd's crash-loop guard (C(StartLimitBurst) starts within
    C(StartLimitIntervalSec)) counts an operator's starts too, and would otherwise refuse the sixth deliberate
    start of a maintenance session.
author:
  - travis.worker developers (@travis-ci)
options:
  name:
    description:
      - Worker instance names (C(worker-3)), full unit names (C(travis-worker@worker-3.service)), or C(all).
      - C(all) means every instance known to systemd (C(systemctl list-units --all 'travis-worker@*')) plus
        the instances enabled into C(travis-worker.target).
    type: list
    elements: str
    required: true
  state:
    description:
      - C(started) starts stopped instances.
      - C(stopped) stops gracefully, waits for running jobs, and forces a requeue after O(force_after) if set.
      - C(drained) stops gracefully and waits for running jobs, but never forces; a job still running at
        O(timeout) fails the task and leaves the worker stopping.
      - C(restarted) is a graceful stop (as C(stopped)) followed by a start; always changed.
      - C(reloaded) reloads active instances (the runner rereads its configuration) and starts inactive ones.
    type: str
    required: true
    choices: [started, stopped, restarted, drained, reloaded]
  timeout:
    description: Seconds to wait in total for the workers to stop; a worker still running then fails the task.
    type: int
    default: 3600
  force_after:
    description:
      - Seconds after the graceful signal after which a worker that is still running gets C(SIGQUIT) (its job
        is requeued). Must not exceed O(timeout). Not allowed with O(state=drained).
    type: int
  poll_interval:
    description: Seconds between two state reads while waiting; must be greater than 0.
    type: float
    default: 2.0
  redis_url:
    description:
      - URL of the Redis server the runners use, e.g. C(redis://:password@10.0.3.1:6379/0). It can carry a
        password and is never logged. Leave unset (or set to an empty string) to use the unit state only.
    type: str
  namespace:
    description: Key namespace of the runner in Redis.
    type: str
    default: resque
  unit_prefix:
    description: Name of the systemd template without C(@.service).
    type: str
    default: travis-worker
requirements:
  - systemd on the target
  - the Python C(redis) library on the target for job-aware waiting (optional)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - travis.worker.attributes
notes:
  - Check mode reports which workers would change and whether they are busy now, without signalling anything.
  - Diff mode shows each instance's unit state before and after.
seealso:
  - name: systemd.kill(5)
    description: Stop and kill signals of systemd units.
    link: https://www.freedesktop.org/software/systemd/man/systemd.kill.html
"""

EXAMPLES = r"""
- name: Drain all workers before maintenance (wait up to one hour for running builds)
  travis.worker.worker_service:
    name: all
    state: drained
    timeout: 3600
    redis_url: "{{ travis_redis_url }}"

- name: Stop worker-3, requeue its job if it is still running after 10 minutes
  travis.worker.worker_service:
    name: worker-3
    state: stopped
    timeout: 900
    force_after: 600
    redis_url: "{{ travis_redis_url }}"

- name: Start two workers
  travis.worker.worker_service:
    name: [worker-1, worker-2]
    state: started
"""

RETURN = r"""
workers:
  description: One entry per instance, in the order given (or discovered for C(all)).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Instance name (the worker VM).
      type: str
      sample: worker-3
    unit:
      description: The systemd unit.
      type: str
      sample: travis-worker@worker-3.service
    previous_state:
      description: Unit C(ActiveState) before the task.
      type: str
      sample: active
    state:
      description: Unit C(ActiveState) after the task (the predicted state in check mode).
      type: str
      sample: inactive
    busy:
      description:
        - Whether the worker was running a job when the task began.
        - From Redis; without Redis, whether the unit was active.
      type: bool
    job_id:
      description: The job the worker was running, when Redis says so.
      type: str
      sample: "4711"
    changed:
      description: Whether this instance was (or would be) changed.
      type: bool
    waited:
      description: Seconds spent waiting for this worker to stop.
      type: float
      sample: 12.4
    forced:
      description: Whether SIGQUIT was sent after O(force_after).
      type: bool
    requeued:
      description:
        - Whether the job the worker was running when it was forced went back to a queue.
        - With Redis this is checked in the queues (RV(workers[].requeued_to)); without Redis it means the
          worker was busy when it got SIGQUIT.
      type: bool
    requeued_to:
      description: The queue that holds the requeued job (Redis only).
      type: str
      returned: when a forced job was looked up in Redis
      sample: builds
state_source:
  description: Where the busy/idle state came from, C(redis) or C(systemd).
  returned: always
  type: str
  sample: redis
state_source_reason:
  description: Why Redis was not used, when RV(state_source) is C(systemd).
  returned: when state_source is systemd
  type: str
  sample: the Python redis library is not importable on the target
"""

import json
import socket
import time
import traceback
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.travis.worker.plugins.module_utils.systemctl import Systemctl, SystemctlError

try:
    import redis

    HAS_REDIS = True
    REDIS_IMPORT_ERROR = None
except ImportError:
    HAS_REDIS = False
    REDIS_IMPORT_ERROR = traceback.format_exc()

STOPPED = ("inactive", "failed")
RUNNING = ("active", "activating", "reloading")
BUSY_STATES = ("busy", "working", "running", "job")


class JobState:
    """Reads the runner's per-VM state from Redis; ``None`` results mean "unknown, use the unit state"."""

    def __init__(self, url: Optional[str], namespace: str) -> None:
        self.source = "systemd"
        self.reason: Optional[str] = None
        self._client = None
        self._ns = namespace
        self._key = f"{namespace}:travis:vm_state"
        self._host = socket.gethostname()  # the runner's worker id starts with the same name
        if not url:
            self.reason = "no redis_url was given"
            return
        if not HAS_REDIS:
            self.reason = (
                "the Python redis library is not importable on the target ("
                + missing_required_lib("redis")
                + ")"
            )
            return
        try:
            client = redis.Redis.from_url(
                url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
            )
            client.ping()
        except Exception as exc:  # any connection/auth error means: fall back to the unit state
            self.reason = f"Redis did not answer ({type(exc).__name__}: {exc})"
            return
        self._client = client
        self.source = "redis"

    def read(self, vm: str) -> Optional[dict[str, Any]]:
        if self._client is None:
            return None
        try:
            raw = self._client.hget(self._key, f"{self._host}:{vm}")
        except Exception as exc:
            self.reason = f"Redis read of {self._key}[{self._host}:{vm}] failed ({type(exc).__name__}: {exc})"
            return None
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {"state": to_text(raw)}
        return data if isinstance(data, dict) else {"state": to_text(data)}

    def find_queued(self, job_id: str, depth: int = 200) -> Optional[str]:
        """The queue that holds job ``job_id`` (the runner LPUSHes a requeued job to the head), or None."""
        if self._client is None:
            return None
        try:
            queues = sorted(self._client.smembers(f"{self._ns}:queues"))
            for queue in queues:
                for raw in self._client.lrange(f"{self._ns}:queue:{queue}", 0, depth - 1):
                    if job_id_of(raw) == job_id:
                        return to_text(queue)
        except Exception as exc:
            self.reason = f"Redis queue scan failed ({type(exc).__name__}: {exc})"
        return None


def job_id_of(raw: Any) -> Optional[str]:
    """The job id of a resque envelope ``{"class": ..., "args": [{"job": {"id": ...}}]}``."""
    try:
        payload = json.loads(raw)["args"][0]
        job = payload.get("job") or {}
        job_id = job.get("id", payload.get("id"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return None if job_id is None else to_text(job_id)


def is_busy(job: Optional[dict[str, Any]], active_state: str) -> tuple[bool, Optional[str]]:
    """(busy, job_id) from the runner's state, or from the unit state when Redis is not available."""
    if job is None:
        return active_state in RUNNING, None
    job_id = job.get("job_id")
    busy = bool(job_id) or str(job.get("state", "")).lower() in BUSY_STATES
    return busy and active_state in RUNNING, (to_text(job_id) if job_id else None)


def unit_for(name: str, prefix: str) -> tuple[str, str]:
    """(instance, unit) for ``worker-3`` or ``travis-worker@worker-3.service``."""
    if name.startswith(prefix + "@"):
        instance = name[len(prefix) + 1 :]
        if instance.endswith(".service"):
            instance = instance[: -len(".service")]
    else:
        instance = name
    return instance, f"{prefix}@{instance}.service"


def discover(systemctl: Systemctl, prefix: str) -> list[str]:
    """All instances known to systemd plus the ones enabled into ``<prefix>.target``."""
    template = f"{prefix}@.service"
    units = [u["unit"] for u in systemctl.list_units(f"{prefix}@*.service")]
    units += [
        u
        for u in systemctl.wants(f"{prefix}.target")
        if u.startswith(prefix + "@") and u.endswith(".service")
    ]
    seen: list[str] = []
    for unit in units:
        if unit != template and unit not in seen:
            seen.append(unit)
    return seen


class WorkerService:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.systemctl = Systemctl(module)
        self.prefix = self.params["unit_prefix"]
        self.jobs = JobState(self.params["redis_url"], self.params["namespace"])

    def targets(self) -> list[tuple[str, str]]:
        names = self.params["name"]
        if "all" in names:
            if len(names) > 1:
                self.module.fail_json(
                    msg="name: 'all' cannot be combined with other worker names: " + ", ".join(names)
                )
            units = discover(self.systemctl, self.prefix)
            return [unit_for(u, self.prefix) for u in units]
        return [unit_for(n, self.prefix) for n in names]

    def snapshot(self, targets: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
        return self.systemctl.show([unit for _name, unit in targets])

    def wants_change(self, active: str) -> bool:
        state = self.params["state"]
        if state == "started":
            return active not in RUNNING
        if state in ("stopped", "drained"):
            return active not in STOPPED
        return True  # restarted, reloaded

    @staticmethod
    def predicted(state: str, active: str) -> str:
        if state in ("stopped", "drained"):
            return "inactive"
        if state == "started" or state in ("restarted", "reloaded"):
            return "active"
        return active

    def run(self) -> dict[str, Any]:
        state = self.params["state"]
        targets = self.targets()
        if not targets:
            return {
                "changed": False,
                "workers": [],
                "msg": f"no {self.prefix}@*.service instances are known to systemd",
            }
        props = self.snapshot(targets)
        missing = [unit for _name, unit in targets if props[unit].get("LoadState") != "loaded"]
        if missing:
            self.module.fail_json(
                msg=(
                    f"unit(s) not found: {', '.join(missing)} — is {self.prefix}@.service installed "
                    "(role travis.worker.worker) and the instance name right? "
                    f"Known: systemctl list-units --all '{self.prefix}@*'"
                ),
                workers=[],
            )
        workers = []
        for instance, unit in targets:
            active = props[unit].get("ActiveState", "unknown")
            busy, job_id = is_busy(self.jobs.read(instance), active)
            workers.append(
                {
                    "name": instance,
                    "unit": unit,
                    "previous_state": active,
                    "state": active,
                    "busy": busy,
                    "job_id": job_id,
                    "changed": self.wants_change(active),
                    "waited": 0.0,
                    "forced": False,
                    "requeued": False,
                }
            )
        changing = [w for w in workers if w["changed"]]
        if self.module.check_mode:
            for w in changing:
                w["state"] = self.predicted(state, w["previous_state"])
        elif changing:
            self.apply(state, changing)
        return self.result(workers)

    def apply(self, state: str, changing: list[dict[str, Any]]) -> None:
        units = [w["unit"] for w in changing]
        if state == "started":
            self.start(units)
        elif state in ("stopped", "drained"):
            self.stop_and_wait(changing)
        elif state == "restarted":
            self.stop_and_wait([w for w in changing if w["previous_state"] not in STOPPED])
            self.start(units)
        elif state == "reloaded":
            self.systemctl.reload([w["unit"] for w in changing if w["previous_state"] in RUNNING])
            self.start([w["unit"] for w in changing if w["previous_state"] not in RUNNING])
        after = self.snapshot([(w["name"], w["unit"]) for w in changing])
        for w in changing:
            w["state"] = after[w["unit"]].get("ActiveState", "unknown")

    def start(self, units: list[str]) -> None:
        """An operator's start: the unit's crash-loop guard (StartLimitBurst, which counts every start) is
        reset first, so that a maintenance session with several stops and starts is never refused."""
        if units:
            self.systemctl.reset_failed(units)
            self.systemctl.start(units)

    def stop_and_wait(self, workers: list[dict[str, Any]]) -> None:
        if not workers:
            return
        timeout = self.params["timeout"]
        force_after = self.params["force_after"]
        interval = max(0.1, self.params["poll_interval"])
        self.systemctl.stop([w["unit"] for w in workers], no_block=True)
        start = time.monotonic()
        pending = {w["unit"]: w for w in workers}
        while pending:
            props = self.systemctl.show(list(pending))
            elapsed = time.monotonic() - start
            for unit, p in props.items():
                if p.get("ActiveState") in STOPPED:
                    pending[unit]["waited"] = round(elapsed, 1)
                    pending[unit]["state"] = p.get("ActiveState")
                    del pending[unit]
            if not pending:
                break
            if force_after is not None and elapsed >= force_after:
                to_force = [w for w in pending.values() if not w["forced"]]
                if to_force:
                    for w in to_force:
                        job = self.jobs.read(w["name"])
                        busy_now, job_id = is_busy(job, "active")
                        w["requeued"] = bool(busy_now if job is not None else w["busy"])
                        w["job_id"] = w["job_id"] or job_id
                        w["forced"] = True
                    self.systemctl.kill([w["unit"] for w in to_force], "SIGQUIT")
            if elapsed >= timeout:
                break
            time.sleep(min(interval, max(0.05, timeout - elapsed)))
        stopped = [w for w in workers if w["unit"] not in pending]
        for w in stopped:
            if w["forced"] and w["requeued"] and w["job_id"] and self.jobs.source == "redis":
                queue = self.jobs.find_queued(w["job_id"])
                w["requeued"] = queue is not None
                w["requeued_to"] = queue
        if pending:
            for w in pending.values():
                w["waited"] = round(time.monotonic() - start, 1)
                w["state"] = "deactivating"
            names = ", ".join(
                f"{w['name']} (job {w['job_id']})" if w["job_id"] else w["name"] for w in pending.values()
            )
            remedy = (
                "the runner did not exit after SIGQUIT either: check `journalctl -u <unit>`"
                if force_after is not None
                else "raise timeout, or use state=stopped with force_after to requeue the job"
            )
            self.module.fail_json(
                msg=f"worker(s) still running after {timeout} s: {names} — {remedy}. "
                "The stop job stays queued in systemd.",
                workers=list(pending.values()),
            )

    def result(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        changed = any(w["changed"] for w in workers)
        result: dict[str, Any] = {"changed": changed, "workers": workers, "state_source": self.jobs.source}
        if self.jobs.source != "redis":
            result["state_source_reason"] = self.jobs.reason
        if self.module._diff:
            result["diff"] = {
                "before": "".join(f"{w['unit']}: {w['previous_state']}\n" for w in workers),
                "after": "".join(f"{w['unit']}: {w['state']}\n" for w in workers),
            }
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True},
            "state": {
                "type": "str",
                "required": True,
                "choices": ["started", "stopped", "restarted", "drained", "reloaded"],
            },
            "timeout": {"type": "int", "default": 3600},
            "force_after": {"type": "int"},
            "poll_interval": {"type": "float", "default": 2.0},
            "redis_url": {"type": "str", "no_log": True},
            "namespace": {"type": "str", "default": "resque"},
            "unit_prefix": {"type": "str", "default": "travis-worker"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["timeout"] < 0:
        module.fail_json(msg=f"timeout must be >= 0 seconds, got {params['timeout']}")
    if params["poll_interval"] <= 0:
        module.fail_json(msg=f"poll_interval must be > 0 seconds, got {params['poll_interval']}")
    if params["force_after"] is not None:
        if params["state"] == "drained":
            module.fail_json(
                msg="force_after is not allowed with state=drained (a drain never requeues jobs); "
                "use state=stopped"
            )
        if not 0 <= params["force_after"] <= params["timeout"]:
            module.fail_json(
                msg=f"force_after ({params['force_after']}) must be between 0 and "
                f"timeout ({params['timeout']}) seconds"
            )
    try:
        result = WorkerService(module).run()
    except SystemctlError as exc:
        module.fail_json(**exc.fail_kwargs())
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
    ) as exc:  # a bug or an odd host: no traceback
        module.fail_json(
            msg=f"worker_service state={module.params['state']} failed unexpectedly: "
            f"{type(exc).__name__}: {exc} — please report this with the "
            "exception below",
            exception=traceback.format_exc(),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
