"""Redis key names (resque-compatible where resque has a key, `<ns>:travis:*` for ours)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    ns: str = "resque"

    def queue(self, name: str) -> str:
        return f"{self.ns}:queue:{name}"

    @property
    def queues(self) -> str:
        return f"{self.ns}:queues"

    @property
    def workers(self) -> str:
        return f"{self.ns}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.ns}:worker:{worker_id}"

    def worker_started(self, worker_id: str) -> str:
        return f"{self.ns}:worker:{worker_id}:started"

    @property
    def heartbeat(self) -> str:
        return f"{self.ns}:workers:heartbeat"

    @property
    def failed(self) -> str:
        return f"{self.ns}:failed"

    def stat(self, name: str, worker_id: str | None = None) -> str:
        return f"{self.ns}:stat:{name}" + (f":{worker_id}" if worker_id else "")

    def processing(self, worker_id: str) -> str:
        return f"{self.ns}:processing:{worker_id}"

    def outbox(self, worker_id: str) -> str:
        return f"{self.ns}:travis:outbox:{worker_id}"

    @property
    def reporting(self) -> str:
        return f"{self.ns}:reporting:jobs"

    @property
    def commands(self) -> str:
        return f"{self.ns}:worker.commands"

    @property
    def worker_state(self) -> str:
        return f"{self.ns}:travis:worker_state"

    @property
    def ours(self) -> str:
        """Set of our workers' ids: the reaper looks only at these (never at a foreign Resque worker)."""
        return f"{self.ns}:travis:workers"

    def attempt(self, job_id: int) -> str:
        return f"{self.ns}:travis:attempt:{job_id}"

    @property
    def vm_state(self) -> str:
        """Hash of every box's VMs: field `<host>:<vm>` (vm_field), value the VM's worker's state."""
        return f"{self.ns}:travis:vm_state"


def host_of(worker_id: str) -> str:
    """The host part of a worker id `<host>:<pid>:<queue>`: the box's host name (`socket.gethostname()`)."""
    return worker_id.split(":", 1)[0]


def vm_field(host: str, vm: str) -> str:
    """Field of VM `vm` of box `host` in `vm_state`: `<host>:<vm>`. Every box names its VMs worker-1..N,
    so the VM name alone collides across the boxes of a fleet on one Redis."""
    return f"{host}:{vm}"
