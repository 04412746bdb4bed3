"""The generated build script, run with real bash against a real local git repository."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_script_support import envelope, git, job_for, make_repo, payload
from travis_worker.payload import Job, PayloadError, parse_job
from travis_worker.script import EXIT_ERRORED, EXIT_FAILED, EXIT_PASSED, build_script


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, str]:
    return make_repo(tmp_path / "git")


def run_script(job: Job, tmp_path: Path, *, git_base_url: str | None = None) -> tuple[int, str]:
    work = Path(tempfile.mkdtemp(prefix="work-", dir=tmp_path))
    script = build_script(job, git_base_url=git_base_url or str(tmp_path / "git"), clone_depth=50)
    (work / "build.sh").write_text(script)
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "LANG": "C.UTF-8"}
    done = subprocess.run(
        ["bash", "build.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, done.stdout + done.stderr


def test_passing_build_checks_out_the_commit(repo: tuple[Path, str], tmp_path: Path) -> None:
    _, commit = repo
    job = job_for(
        commit, {"script": ["test -f .travis.yml", 'test "$(git rev-parse HEAD)" = "$TRAVIS_COMMIT"']}
    )
    code, out = run_script(job, tmp_path)
    assert code == EXIT_PASSED, out
    assert "travis_fold:start:git.checkout" in out and "travis_fold:end:git.checkout" in out
    assert "$ test -f .travis.yml" in out
    assert "Done. Your build exited with 0." in out


def test_failing_script_fails_and_every_script_command_runs(repo: tuple[Path, str], tmp_path: Path) -> None:
    config = {
        "script": ["false", "echo second-ran"],
        "after_success": "echo after-success-ran",
        "after_failure": "echo after-failure-ran",
        "after_script": "echo after-script-ran",
    }
    code, out = run_script(job_for(repo[1], config), tmp_path)
    assert code == EXIT_FAILED, out
    assert "second-ran" in out.replace("$ echo second-ran", "")
    assert "after-failure-ran" in out.replace("$ echo after-failure-ran", "")
    assert "after-success-ran" not in out.replace("$ echo after-success-ran", "")
    assert "after-script-ran" in out.replace("$ echo after-script-ran", "")


@pytest.mark.parametrize("phase", ["before_install", "install", "before_script"])
def test_failing_setup_phase_errors_and_stops(repo: tuple[Path, str], tmp_path: Path, phase: str) -> None:
    config = {phase: ["true", "false"], "script": "echo script-ran", "after_script": "echo after-ran"}
    code, out = run_script(job_for(repo[1], config), tmp_path)
    assert code == EXIT_ERRORED, out
    assert f'The command "false" failed and exited with 1 during {phase}.' in out
    assert "script-ran" not in out and "after-ran" not in out


@pytest.mark.parametrize("command", ["exit 0", "exit 1", "exit 7"])
def test_exit_in_install_errors(repo: tuple[Path, str], tmp_path: Path, command: str) -> None:
    code, out = run_script(job_for(repo[1], {"install": command, "script": "echo script-ran"}), tmp_path)
    assert code == EXIT_ERRORED, out
    assert "script-ran" not in out.replace("$ echo script-ran", "")


@pytest.mark.parametrize(("command", "expected"), [("exit 0", EXIT_PASSED), ("exit 9", EXIT_FAILED)])
def test_exit_in_script(repo: tuple[Path, str], tmp_path: Path, command: str, expected: int) -> None:
    code, out = run_script(job_for(repo[1], {"script": command}), tmp_path)
    assert code == expected, out


@pytest.mark.parametrize(
    ("script", "expected"), [("true", EXIT_PASSED), ("false", EXIT_FAILED)], ids=["passed", "failed"]
)
def test_after_phases_never_change_the_result(
    repo: tuple[Path, str], tmp_path: Path, script: str, expected: int
) -> None:
    config = {
        "script": script,
        "after_success": ["false", "exit 5"],
        "after_failure": ["false", "exit 5"],
        "after_script": "exit 3",
    }
    code, out = run_script(job_for(repo[1], config), tmp_path)
    assert code == expected, out


def test_environment_and_shell_state_carry_across_commands(repo: tuple[Path, str], tmp_path: Path) -> None:
    config = {
        "env": ["GREETING='hello world' EMPTY=", "DOLLAR=$HOME"],
        "before_install": ["mkdir sub", "cd sub", "export FROM_BEFORE=1"],
        "script": [
            'test "$GREETING" = "hello world"',
            'test -z "$EMPTY"',
            "test \"$DOLLAR\" = '$HOME'",
            'test "$(basename "$PWD")" = sub',
            'test "$FROM_BEFORE" = 1',
            'test "$TRAVIS_REPO_SLUG" = owner/name && test "$TRAVIS_BRANCH" = master',
            'test "$TRAVIS_JOB_ID" = 1 && test "$TRAVIS_JOB_NUMBER" = 1.1',
        ],
    }
    code, out = run_script(job_for(repo[1], config), tmp_path)
    assert code == EXIT_PASSED, out
    assert "$ export GREETING='hello world'" in out


def test_clone_of_missing_branch_errors(repo: tuple[Path, str], tmp_path: Path) -> None:
    code, out = run_script(job_for(repo[1], {"script": "echo script-ran"}, branch="nope"), tmp_path)
    assert code == EXIT_ERRORED, out
    assert "during checkout" in out and "script-ran" not in out.replace("$ echo script-ran", "")


def test_checkout_of_unknown_commit_errors(repo: tuple[Path, str], tmp_path: Path) -> None:
    code, out = run_script(job_for("0" * 40, {"script": "echo script-ran"}), tmp_path)
    assert code == EXIT_ERRORED, out
    assert "during checkout" in out


def test_source_url_wins_over_git_base_url(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    moved = tmp_path / "elsewhere.git"
    path.rename(moved)
    job = job_for(commit, {"script": "true"}, source_url=f"file://{moved}")
    code, out = run_script(job, tmp_path, git_base_url="/nonexistent")
    assert code == EXIT_PASSED, out


def test_clone_depth_is_honoured(tmp_path: Path) -> None:
    path, _ = make_repo(tmp_path / "git")
    for n in range(3):
        (path / "f").write_text(str(n))
        git("add", "f", cwd=path)
        git("commit", "-qm", f"c{n}", cwd=path)
    head = git("rev-parse", "HEAD", cwd=path)
    job = job_for(head, {"script": 'test "$(git rev-list --count HEAD)" = 2'})
    script = build_script(job, git_base_url=f"file://{tmp_path / 'git'}", clone_depth=2)
    assert "--depth=2" in script
    work = tmp_path / "w"
    work.mkdir()
    (work / "b.sh").write_text(script)
    done = subprocess.run(["bash", "b.sh"], cwd=work, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_PASSED, done.stdout + done.stderr


# --- hostile values -------------------------------------------------------------------------------


def hostile_values(marker: Path) -> list[str]:
    return [
        f"; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"x\ntouch {marker}\n",
        f"--upload-pack=touch {marker}",
        f"-c core.sshCommand='touch {marker}'",
        f"'; touch {marker}; '",
        f'"; touch {marker}; "',
        f"ext::sh -c touch% {marker}",
    ]


@pytest.mark.parametrize("field", ["slug", "branch", "commit", "source_url", "env_name", "env_entry"])
def test_hostile_values_in_validated_fields_are_rejected(tmp_path: Path, field: str) -> None:
    marker = tmp_path / "pwned"
    for value in hostile_values(marker):
        kwargs: dict = {}
        config: dict = {"script": "true"}
        commit = "abcdef0"
        if field == "commit":
            commit = value
        elif field == "env_name":
            config["env"] = {value: "x"}
        elif field == "env_entry":
            config["env"] = [f"A=1 {value}"]
            if value.startswith(("$(", "`", "'", '"')):  # one quoted word: a literal value, tested below
                continue
        else:
            kwargs[field] = value
        with pytest.raises(PayloadError) as info:
            parse_job(envelope(payload(commit, config, **kwargs)))
        head = str(info.value).split(":", 1)[0]
        assert {"env_name": "config.env", "env_entry": "config.env[0]"}.get(field, field) in head, head
    assert not marker.exists()


def test_hostile_env_values_are_exported_literally(repo: tuple[Path, str], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    values = hostile_values(marker)
    env = {f"V{i}": value for i, value in enumerate(values)}
    checks = [f'test "$V{i}" = {shlex.quote(value)}' for i, value in enumerate(values)]
    job = job_for(repo[1], {"env": env, "script": checks})
    code, out = run_script(job, tmp_path)
    assert code == EXIT_PASSED, out
    assert not marker.exists()


def test_hostile_values_are_quoted_even_without_validation(repo: tuple[Path, str], tmp_path: Path) -> None:
    """Defence in depth: build Jobs that bypass parse_job and prove the script never runs them."""
    marker = tmp_path / "pwned"
    base = job_for(repo[1], {"script": "echo script-ran"})
    for value in hostile_values(marker):
        for field in ("slug", "branch", "commit", "source_url", "number"):
            job = dataclasses.replace(base, **{field: value})
            code, out = run_script(job, tmp_path)
            if field == "number":  # only shown in $TRAVIS_JOB_NUMBER
                assert code == EXIT_PASSED, out
            else:
                assert code == EXIT_ERRORED, (field, value, out)
            assert not marker.exists(), (field, value, out)
    for url in (f"ext::sh -c touch% {marker}", f"--upload-pack=touch {marker}"):
        job = dataclasses.replace(base, source_url=None)
        code, out = run_script(job, tmp_path, git_base_url=url)
        assert code == EXIT_ERRORED and not marker.exists(), out


def test_commands_are_echoed_and_quoted_not_spliced(repo: tuple[Path, str], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    job = job_for(repo[1], {"script": f"echo 'it'\"'\"'s'; echo \"$(echo nested)\" # touch {marker}"})
    code, out = run_script(job, tmp_path)
    assert code == EXIT_PASSED, out
    assert "it's" in out and "nested" in out and not marker.exists()


def test_clone_depth_must_be_a_non_negative_integer(repo: tuple[Path, str]) -> None:
    job = job_for(repo[1], {})
    with pytest.raises(ValueError, match="clone_depth"):
        build_script(job, git_base_url="/x", clone_depth=-1)
    assert "--depth" not in build_script(job, git_base_url="/x", clone_depth=0)
