"""`python -m travis_lab up|down|status|ssh`: worker box containers for hands-on use."""

from __future__ import annotations

import argparse
import os
import shlex

from travis_lab.errors import LabError


def _up(args: argparse.Namespace) -> int:
    from travis_lab.boxbuild import ensure_box, host_arch
    from travis_lab.container import create_container, unique_name

    name = args.name or unique_name("twlab-")
    box = ensure_box()
    c = create_container(name, box.rootfs, arch=host_arch())
    print(f"container: {c.name} ip: {c.ip}")
    print(f"ssh:       {shlex.join(c.ssh_command())}")
    print("inventory:")
    print(c.inventory().rstrip())
    return 0


def _down(args: argparse.Namespace) -> int:
    from travis_lab.container import destroy_container, lab_containers, stale_test_containers

    names = list(args.names)
    if args.all_lab:
        names += [n for n in lab_containers(prefix="twlab-") if n not in names]
    if args.stale_tests:
        names += [n for n in stale_test_containers() if n not in names]
    if not names:
        if args.all_lab or args.stale_tests:  # a sweep that finds nothing has nothing to do
            print("nothing to remove")
            return 0
        raise LabError("teardown", "no container named", "give NAME(s), --all-lab or --stale-tests")
    for name in names:
        try:
            destroy_container(name)
        except ValueError as exc:
            raise LabError(
                "teardown", str(exc), "only twlab-/twt- containers made by the lab can be removed"
            ) from exc
        print(f"removed {name}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from travis_lab.boxbuild import lookup, make_inputs
    from travis_lab.container import container_ips, container_state, lab_containers
    from travis_lab.net import bridge_up, dnsmasq_pid

    box = lookup(make_inputs())
    print(f"box:    {box.path if box else 'not built (python -m travis_lab box build)'}")
    if box:
        print(f"        built {box.built_at}, sha256 {box.sha256[:16]}")
    pid = dnsmasq_pid()
    dhcp = (
        f"DHCP by dnsmasq pid {pid}" if pid else "NO DHCP server (dnsmasq not running: `up` restarts lxc-net)"
    )
    print(f"bridge: lxcbr0 {'up, ' + dhcp if bridge_up() else 'DOWN'}")
    names = lab_containers()
    print(f"containers created by the lab: {len(names)}")
    for n in names:
        print(f"  {n:32} {container_state(n):10} {' '.join(container_ips(n))}")
    return 0


def _ssh(args: argparse.Namespace) -> int:
    from travis_lab.container import bridge_ip
    from travis_lab.sshkey import lab_keypair, ssh_argv
    from travis_lab.state import State

    if not State().owns(args.name):
        raise LabError("ssh", f"{args.name} was not created by the lab", "see `python -m travis_lab status`")
    ip = bridge_ip(args.name)
    if not ip:
        raise LabError("ssh", f"{args.name} has no IP on lxcbr0 (stopped?)", f"`lxc-info -n {args.name}`")
    argv = ssh_argv(lab_keypair(), "root", ip) + list(args.cmd)
    os.execvp(argv[0], argv)
    return 0  # not reached


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser("up", help="create and start a worker box container (prints ssh + inventory)")
    up.add_argument("--name", help="container name (must start with twlab-); default: random")
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="remove worker box containers the lab created")
    down.add_argument("names", nargs="*", metavar="NAME")
    down.add_argument("--all-lab", action="store_true", help="every twlab- container in the lab state")
    down.add_argument(
        "--stale-tests",
        action="store_true",
        help="twt- containers whose creating test process is gone (after a killed test run)",
    )
    down.set_defaults(func=_down)
    status = sub.add_parser("status", help="box cache, bridge and lab containers")
    status.set_defaults(func=_status)
    ssh = sub.add_parser("ssh", help="ssh into a lab container as root")
    ssh.add_argument("name")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=_ssh)
