"""module_utils/vagrant: machine-readable and ssh-config parsing, the error classifier, the runner argv."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.travis.worker.plugins.module_utils import vagrant as v
from module_harness import recorded


def lines(fixture: str) -> list:
    return v.parse_machine_readable(recorded(f"vagrant/{fixture}")["stdout"])


def test_unescape_commas_and_newlines():
    assert v.unescape("a%!(VAGRANT_COMMA) b\\nc") == "a, b\nc"


def test_parse_recorded_lxc_status():
    assert v.parse_status(lines("lxc_status_not_created")) == [
        v.Machine("worker-1", "not_created", "lxc"),
        v.Machine("worker-2", "not_created", "lxc"),
    ]
    info = [line for line in lines("lxc_status_not_created") if line.type == "ui"]
    assert "Current machine states:\n\nworker-1" in info[0].data[1]


def test_parse_virtualbox_status_states():
    machines = v.parse_status(lines("vbox_status_mixed"))
    assert [(m.name, m.state) for m in machines] == [
        ("worker-1", "running"),
        ("worker-2", "poweroff"),
        ("worker-3", "saved"),
        ("worker-4", "aborted"),
        ("worker-5", "not_created"),
    ]
    assert {m.provider for m in machines} == {"virtualbox"}


def test_parse_box_lists():
    assert v.parse_box_list(lines("lxc_box_list_empty")) == []
    assert v.parse_box_list(lines("lxc_box_list_one")) == [v.Box("twt-rec/tiny", "lxc", "0")]
    assert v.parse_box_list(lines("lxc_box_list_version")) == [v.Box("twt-rec/ver", "lxc", "1.2.3")]
    assert len(v.parse_box_list(lines("vbox_box_list"))) == 3


def test_parse_virtualbox_guru_meditation_state():
    machines = v.parse_status(lines("vbox_status_guru"))
    assert [(m.name, m.state) for m in machines] == [("worker-1", "gurumeditation"), ("worker-2", "running")]


def test_parse_box_list_vagrant_24_architectures():
    """Vagrant 2.4 prints one box-name/provider/version/architecture block per architecture."""
    recorded_lines = lines("vbox_box_list_24")
    boxes = v.parse_box_list(recorded_lines)
    assert boxes == [
        v.Box("travis/worker-focal", "virtualbox", "2.2.0"),
        v.Box("travis/worker-focal", "virtualbox", "2.2.0"),
        v.Box("travis/worker-jammy", "virtualbox", "0"),
    ]
    assert v.parse_box_architectures(recorded_lines) == {
        ("travis/worker-focal", "virtualbox", "2.2.0"): ["amd64", "arm64"],
        ("travis/worker-jammy", "virtualbox", "0"): [],
    }
    assert v.parse_box_architectures(lines("vbox_box_list")) == {
        ("travis/worker-focal", "virtualbox", "2.1.0"): [],
        ("travis/worker-focal", "virtualbox", "2.2.0"): [],
        ("travis/worker-jammy", "virtualbox", "0"): [],
    }


@pytest.mark.parametrize("fixture", ["vbox_ssh_config_worker1", "vbox_ssh_config_worker1_234"])
def test_parse_ssh_config_vagrant_23_and_24(fixture):
    host = v.parse_ssh_config(recorded(f"vagrant/{fixture}")["stdout"])["worker-1"]
    assert (host["hostname"], host["port"], host["user"]) == ("127.0.0.1", "2222", "vagrant")
    assert ("hostkeyalgorithms" in host) == fixture.endswith("worker1")  # 2.4 adds the ssh-rsa lines


def test_parse_ssh_config():
    hosts = v.parse_ssh_config(recorded("vagrant/vbox_ssh_config_worker1")["stdout"])
    assert hosts["worker-1"]["hostname"] == "127.0.0.1"
    assert hosts["worker-1"]["port"] == "2222"
    assert hosts["worker-1"]["identityfile"].endswith("/private_key")
    two = v.parse_ssh_config(
        'Host a\n  HostName 10.0.3.2\n  IdentityFile "/x y/key"\nHost b\n  HostName 10.0.3.3\n'
    )
    assert two == {"a": {"hostname": "10.0.3.2", "identityfile": "/x y/key"}, "b": {"hostname": "10.0.3.3"}}


@pytest.mark.parametrize(
    ("fixture", "kind", "needle"),
    [
        ("lxc_status_unknown_machine", "unknown_machine", "not defined in the Vagrantfile"),
        ("lxc_up_provider_not_found", "provider_missing", "vagrant plugin install"),
        ("lxc_up_virtualbox_not_usable", "provider_unusable", "install VirtualBox"),
        (
            "vbox_up_unsupported_version",
            "provider_unusable",
            "this Vagrant cannot drive the installed VirtualBox (its driver map lists 4.0, 4.1, 4.2, 4.3, "
            "5.0, 5.1, 5.2, 6.0, 6.1, 7.0); install a Vagrant that lists that VirtualBox (VirtualBox 7.1 "
            "needs Vagrant >= 2.4.2",
        ),
        ("lxc_up_box_not_found", "box_not_found", "travis.worker.vagrant_box"),
        ("lxc_box_remove_missing", "box_not_found", "twt-nobox/x"),
        ("lxc_box_add_bad_file", "box_corrupt", "Unrecognized archive format"),
        ("lxc_box_add_missing_file", "box_download", "check 'src'"),
        ("lxc_status_no_vagrantfile", "no_vagrantfile", "project_dir"),
        ("vbox_up_locked", "machine_locked", "VBoxManage startvm travis-worker-2 --type emergencystop"),
        ("vbox_up_action_locked", "machine_locked", "another vagrant process"),
        ("lxc_up_action_locked", "machine_locked", "another vagrant process"),
        ("lxc_halt_action_locked", "machine_locked", "another vagrant process"),
        ("vbox_box_add_disk_full", "disk_full", "free space"),
        ("lxc_box_add_exists", "vagrant_error", "already exists"),
    ],
)
def test_classifier_on_recorded_errors(fixture, kind, needle):
    rec = recorded(f"vagrant/{fixture}")
    assert rec["rc"] != 0
    err = v.classify(rec["rc"], rec["stdout"], rec["stderr"], rec["argv"], machine="worker-2")
    assert err.kind == kind
    assert needle in err.msg
    assert "machine 'worker-2'" in err.msg or kind == "no_vagrantfile"
    assert f"rc={rec['rc']}" in err.msg
    assert err.as_dict()["stdout"] == rec["stdout"]


def test_reconstructed_action_lock_matches_the_capture():
    """The VirtualBox reconstruction of MachineActionLockedError equals the real vagrant-lxc run but for the
    timestamps and the provider name (the error is raised before any provider code runs)."""

    def shape(fixture):
        return [(x.target, x.type, [d.replace("lxc", "virtualbox") for d in x.data]) for x in lines(fixture)]

    assert shape("vbox_up_action_locked") == shape("lxc_up_action_locked")


def test_classifier_timeout_and_plain_stderr():
    err = v.classify(124, "", "", ["/usr/bin/timeout", "--kill-after=30", "5", "vagrant", "up"], machine="w")
    assert err.kind == "timeout" and "raise 'timeout'" in err.msg
    err = v.classify(1, "", "Error: No space left on device\n", ["vagrant", "box", "add"], box="b/x")
    assert err.kind == "disk_full" and "box 'b/x'" in err.msg


class Recorder:
    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.calls = []

    def __call__(self, argv, cwd, env):
        self.calls.append((argv, cwd, env))
        return self.outputs.pop(0)


def test_runner_argv_env_and_dry_run(tmp_path: Path):
    rec = recorded("vagrant/lxc_status_not_created")
    execute = Recorder([(0, rec["stdout"], ""), (0, "", "")])
    runner = v.VagrantRunner(
        execute, "/usr/bin/vagrant", project_dir=str(tmp_path), vagrant_home="/h", timeout=60
    )
    assert runner.status(provider="lxc")[0].state == "not_created"
    argv, cwd, env = execute.calls[0]
    assert argv == ["timeout", "--kill-after=30", "60", "/usr/bin/vagrant", "status", "--machine-readable"]
    assert cwd == str(tmp_path)
    assert env["LANG"] == "C" and env["VAGRANT_HOME"] == "/h" and env["VAGRANT_DEFAULT_PROVIDER"] == "lxc"
    runner.dry_run = True
    result = runner.destroy(["w1"], parallel=True)
    assert result.cmd[3:] == [
        "/usr/bin/vagrant",
        "destroy",
        "--force",
        "w1",
        "--parallel",
        "--machine-readable",
    ]
    assert len(execute.calls) == 1  # dry run executed nothing
    runner.dry_run = False
    runner.timeout = None
    runner.box_add("/b.box", name="n/b", provider="lxc", checksum="ab", checksum_type="sha1", force=True)
    assert execute.calls[1][0] == [
        "/usr/bin/vagrant",
        "box",
        "add",
        "--name",
        "n/b",
        "--provider",
        "lxc",
        "--checksum",
        "ab",
        "--checksum-type",
        "sha1",
        "--force",
        "/b.box",
        "--machine-readable",
    ]


def test_runner_raises_classified_error_even_on_rc_zero_error_exit():
    rec = recorded("vagrant/lxc_status_unknown_machine")
    runner = v.VagrantRunner(Recorder([(0, rec["stdout"], "")]), "vagrant")
    with pytest.raises(v.VagrantError) as info:
        runner.status(["nope"])
    assert info.value.kind == "unknown_machine"
    assert "machine 'nope'" in info.value.msg


def test_box_directory_layouts(tmp_path: Path):
    assert v.box_directory(str(tmp_path), "a/b", "0", "lxc") == str(tmp_path / "boxes/a-VAGRANTSLASH-b/0/lxc")
    arch = tmp_path / "boxes/a-VAGRANTSLASH-b/1.0/amd64/lxc"
    arch.mkdir(parents=True)
    assert v.box_directory(str(tmp_path), "a/b", "1.0", "lxc") == str(arch)
