"""Lab naming, state and Vagrantfile rendering: the rules that keep the lab off other people's things."""

from __future__ import annotations

from pathlib import Path

import pytest
from travis_lab.container import BoxContainer, destroy_container, unique_name
from travis_lab.errors import LabError
from travis_lab.state import State, check_name
from travis_lab.vagrant import make_project, render_vagrantfile


@pytest.mark.parametrize("name", ["box", "lxc-prod", "twlab-", "twt-", "twt-a b", "twlab-x;rm", "TWT-x"])
def test_names_without_a_lab_prefix_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


def test_unique_names_carry_the_prefix() -> None:
    a, b = unique_name("twt-"), unique_name("twt-")
    assert a.startswith("twt-box-") and a != b
    check_name(a)


def test_state_records_and_forgets(tmp_path: Path) -> None:
    st = State(tmp_path)
    st.add("twt-one")
    st.add("twlab-two")
    assert st.names() == ["twlab-two", "twt-one"]
    assert st.owns("twt-one")
    st.remove("twt-one")
    assert st.names() == ["twlab-two"]
    with pytest.raises(ValueError):
        st.add("somebody-else")


def test_teardown_refuses_what_the_lab_did_not_create(tmp_path: Path) -> None:
    with pytest.raises(LabError) as exc:
        destroy_container("twt-not-mine", cache_dir=tmp_path)
    assert exc.value.step == "teardown"
    with pytest.raises(ValueError):
        destroy_container("production-box", cache_dir=tmp_path)


def test_inventory_formats(tmp_path: Path) -> None:
    c = BoxContainer(name="twt-box-abc", ip="10.0.3.9", ssh_key=tmp_path / "id")
    ini = c.inventory()
    assert ini.startswith("[worker_boxes]\ntwt-box-abc ansible_host=10.0.3.9 ansible_user=root")
    assert "StrictHostKeyChecking=no" in ini
    import yaml

    data = yaml.safe_load(c.inventory("yaml", group="g"))
    assert data["all"]["children"]["g"]["hosts"]["twt-box-abc"]["ansible_host"] == "10.0.3.9"
    with pytest.raises(ValueError):
        c.inventory("toml")


def test_vagrantfile_names_machines_and_containers() -> None:
    text = render_vagrantfile("twlab/debian12", {"worker-1": "twt-x-worker-1"}, provision_script="echo 'hi'")
    assert 'config.vm.box = "twlab/debian12"' in text
    assert 'config.vm.define "worker-1"' in text
    assert 'lxc.container_name = "twt-x-worker-1"' in text
    assert "inline: \"echo 'hi'\"" in text
    assert "disabled: true" in text


def test_make_project_layout(tmp_path: Path) -> None:
    p = make_project(2, parent=tmp_path)
    assert p.root.name.startswith("twt-")
    assert list(p.machines) == ["worker-1", "worker-2"]
    assert all(c.startswith("twt-") for c in p.machines.values())
    assert (p.root / "Vagrantfile").read_text().count("config.vm.define") == 2
    with pytest.raises(ValueError):
        make_project(0, parent=tmp_path)
    with pytest.raises(ValueError):
        make_project(1, name_prefix="Bad Name", parent=tmp_path)


def test_stale_test_containers_are_those_of_dead_processes(tmp_path: Path) -> None:

    from travis_lab.container import stale_test_containers

    st = State(tmp_path)
    st.add("twt-mine")  # this process: alive
    with st.edit() as data:
        data["twt-gone"] = {"pid": 2**22 + 12345}  # above pid_max: never alive
        data["twlab-cli"] = {"pid": 2**22 + 12345}  # lab CLI containers are not test leftovers
    assert stale_test_containers(tmp_path) == ["twt-gone"]
