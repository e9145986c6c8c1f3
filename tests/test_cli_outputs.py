"""Output paths are checked before any work starts, and Ctrl-C ends a command with one line.

Every case runs the real CLI entry point (`simdist.cli.main.main`) in this process, so no model
is loaded or compiled: the path checks come first, which is what these tests show (the inputs
given do not even exist; a command that looked at them first would fail on them instead).

Read-only locations: the tests run as root, and root passes every permission check
(`chmod 555` and `os.access` alike), so a read-only folder is simulated by replacing
`simdist.paths._writable` (the one place that asks `os.access`) for that folder only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simdist import paths
from simdist.paths import OutputPathError, check_output_dir, check_output_file, make_output_dir


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `simdist ARGS` through the CLI's entry point; (exit code, stdout, stderr)."""
    from simdist.cli import main as cli
    from tests.conftest import _CACHE

    monkeypatch.setenv("SIMDIST_JAX_CACHE", str(_CACHE))  # the suite's cache, as conftest set it
    monkeypatch.setattr(sys, "argv", ["simdist", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _assert_one_error_line(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None) and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# The commands with an output directory, each with inputs that do not exist.
def _commands(tmp: Path) -> dict[str, list[str]]:
    missing = str(tmp / "missing")
    return {
        "train-expert": ["train-expert", "--preset", "tiny", "--no-progress", "--out"],
        "generate-data": ["generate-data", "--preset", "tiny", "--expert", missing, "--no-progress", "--out"],
        "distill": ["distill", "--preset", "tiny", "--data", missing, "--no-progress", "--out"],
        "finetune": ["finetune", "--model", missing, "--real-data", missing, "--no-progress", "--out"],
        "deploy --record": ["deploy", "--model", missing, "--no-progress", "--record"],
        "demo": ["demo", "--preset", "tiny", "--no-progress", "--out"],
        "export": ["export", "--model", missing, "--out"],
        "gaps run": ["gaps", "run", "--model", missing, "--no-progress", "--out"],
    }


@pytest.mark.parametrize("case", ["existing file", "under a file", "read-only folder", "read-only directory"])
@pytest.mark.parametrize("command", list(_commands(Path("/x"))))
def test_bad_output_directory_is_one_line_before_any_work(command, case, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "ro").mkdir()
    target, reason = {
        "existing file": (tmp_path / "file", "exists and is not a directory"),
        "under a file": (tmp_path / "file" / "run", f"{tmp_path / 'file'} is a file, not a directory"),
        "read-only folder": (tmp_path / "ro" / "new" / "run", f"{tmp_path / 'ro'} is not writable"),
        "read-only directory": (tmp_path / "ro", "not writable"),
    }[case]
    ro = tmp_path / "ro"
    monkeypatch.setattr(paths, "_writable", lambda d: Path(d) != ro and os.access(d, os.W_OK | os.X_OK))
    before = _tree(tmp_path)
    code, out, err = _main(monkeypatch, capsys, *_commands(tmp_path)[command], str(target))
    _assert_one_error_line(code, err, str(target), reason)
    assert _tree(tmp_path) == before  # nothing created, nothing left behind
    assert (tmp_path / "file").read_text() == "not a directory"


def test_deploy_json_directory_is_refused_before_any_episode(tmp_path, monkeypatch, capsys):
    report = tmp_path / "report"
    report.mkdir()
    before = _tree(tmp_path)
    code, out, err = _main(monkeypatch, capsys, "deploy", "--model", str(tmp_path / "missing"), "--no-progress",
                           "--json", str(report))  # fmt: skip
    _assert_one_error_line(code, err, f"--json {report}: is a directory")
    assert out == "" and _tree(tmp_path) == before  # no episode ran, no report.tmp*
    # A --json under a file, and in a read-only folder.
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "r.json", report / "r.json"):
        monkeypatch.setattr(paths, "_writable", lambda d: Path(d) != report)
        code, out, err = _main(monkeypatch, capsys, "deploy", "--model", str(tmp_path / "missing"), "--json", str(target))
        _assert_one_error_line(code, err, f"--json {target}: cannot create the file")
    assert _tree(tmp_path) == before | {"file"}


def test_eval_expert_report_path_is_checked_first(tmp_path, monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "eval-expert", "--expert", str(tmp_path / "missing"),
                           "--json", str(tmp_path))  # fmt: skip
    _assert_one_error_line(code, err, f"--json {tmp_path}: is a directory")


def test_a_dataset_is_not_a_run_directory(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "zarr.json").write_text("{}")
    for command in ("train-expert", "distill", "finetune"):
        code, out, err = _main(monkeypatch, capsys, *_commands(tmp_path)[command], str(data))
        _assert_one_error_line(code, err, f"--out {data}: is a dataset")
    assert _tree(data) == {"zarr.json"}


def test_real_cli_process_prints_one_line_for_a_bad_out(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "simdist.cli.main", "distill", "--out", str(tmp_path / "file" / "m")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: --out {tmp_path / 'file' / 'm'}: cannot create the directory: {tmp_path / 'file'} is a file, not a directory"
    ]


def test_path_checks_accept_good_paths_and_create_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    assert check_output_dir(tmp_path / "run") == tmp_path / "run"  # an existing run: resume
    assert check_output_dir(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b" / "c"
    assert check_output_file(tmp_path / "x" / "r.json") == tmp_path / "x" / "r.json"
    (tmp_path / "r.json").write_text("{}")
    assert check_output_file(tmp_path / "r.json") == tmp_path / "r.json"  # replaced atomically
    assert _tree(tmp_path) == {"run", "r.json"}
    (tmp_path / "run" / "f").write_text("")
    with pytest.raises(OutputPathError, match="exists and is not a directory"):
        make_output_dir(tmp_path / "run" / "f", "--out")
    with pytest.raises(OutputPathError, match=r"cannot create the directory \(.*Not a directory"):
        make_output_dir(tmp_path / "run" / "f" / "sub", "--out")
    assert make_output_dir(tmp_path / "new" / "dir").is_dir()


def test_an_os_error_from_a_pipeline_is_one_line(tmp_path, monkeypatch, capsys):
    """What the checks cannot foresee (a disk that fills, a folder removed meanwhile) still
    ends as one line, not a traceback."""
    import simdist.pipelines.distill as distill

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(distill, "distill", fail)
    code, out, err = _main(monkeypatch, capsys, "distill", "--preset", "tiny", "--data", str(tmp_path),
                           "--out", str(tmp_path / "m"))  # fmt: skip
    _assert_one_error_line(code, err, "OSError: [Errno 28] No space left on device")
    assert code == 1


# ---- Ctrl-C --------------------------------------------------------------------------------------
def test_a_second_ctrl_c_during_cleanup_still_says_what_was_kept(tmp_path, monkeypatch, capsys):
    import simdist.pipelines.train_expert as train_expert

    def interrupted_twice(*args, **kwargs):
        try:
            raise KeyboardInterrupt  # the first Ctrl-C, in training
        finally:
            raise KeyboardInterrupt  # the second, while the first one's cleanup runs

    monkeypatch.setattr(train_expert, "train_expert", interrupted_twice)
    previous = signal.getsignal(signal.SIGINT)
    try:
        code, out, err = _main(monkeypatch, capsys, "train-expert", "--preset", "tiny", "--out", str(tmp_path / "r"))
    finally:
        signal.signal(signal.SIGINT, previous)  # main ignores Ctrl-C once it has decided to exit
    assert code == 130 and out == ""
    assert err.strip().splitlines() == [
        "interrupted; checkpoints and snapshots saved so far are kept; run the same command again to resume"
    ]


def _stop_at(action):
    """A zero-action controller; `action(episode, step)` runs before each step (a Ctrl-C, say)."""
    from simdist.planning.controller import ZeroController

    class StopAt(ZeroController):
        def __init__(self):
            super().__init__(1)
            self.action, self.episode, self.step = action, 0, 0

        def reset(self, obs, command):
            self.episode += 1
            self.step = 0

        def act(self, obs, command):
            self.action(self.episode, self.step)
            self.step += 1
            return super().act(obs, command)

    return StopAt()


def _deploy_stopped(monkeypatch, capsys, tmp_path, action, extra_patch=None):
    import simdist.pipelines.deploy as dep

    monkeypatch.setattr(dep, "make_controller", lambda *a, **k: _stop_at(action))
    if extra_patch is not None:
        extra_patch(dep)
    rec = tmp_path / "real"
    previous = signal.getsignal(signal.SIGINT)
    try:
        code, out, err = _main(monkeypatch, capsys, "deploy", "--robot", "cartpole", "--model", str(tmp_path),
                               "--gap", "none", "--episodes", "3", "--episode-length", "12", "--no-progress",
                               "--record", str(rec), "--json", str(tmp_path / "report.json"))  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    return code, out, err, rec


def _ctrl_c(episode, step):
    def action(ep, st):
        if (ep, st) == (episode, step):
            raise KeyboardInterrupt

    return action


def test_interrupted_deploy_prints_finished_episodes_and_keeps_the_recording(tmp_path, monkeypatch, capsys):
    from simdist.data.dataset import Dataset

    code, out, err, rec = _deploy_stopped(monkeypatch, capsys, tmp_path, _ctrl_c(3, 4))
    assert code == 130
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["episode   1", "episode   2"]
    assert all("(12 steps)" in line for line in lines[:2]) and not any(line.startswith("episode   3") for line in lines)
    assert any(line.startswith("return ") and line.endswith("over 2 episodes (2 of 3 finished)") for line in lines)
    assert f"recorded 28 steps to {rec}" in lines
    assert err.strip().splitlines() == [
        f"interrupted; deploy episode 3 of 3: robot stopped; saved 3 episode(s), 28 transitions "
        f"(the last one partial, 4 steps) to {rec}"
    ]
    ds = Dataset.open(rec)
    np.testing.assert_array_equal(ds.episodes()[:, 1], [12, 12, 4])
    np.testing.assert_array_equal(ds.episodes()[:, 3], [0, 0, 1])  # the partial one marked terminated
    assert not (tmp_path / "report.json").exists()


def test_a_second_ctrl_c_while_deploy_saves_waits_for_the_data(tmp_path, monkeypatch, capsys):
    """Ctrl-C at step 4 of episode 2, and again while the partial episode is being saved: the
    save completes, and the line says what was saved."""
    from simdist.data.dataset import Dataset

    def patch(dep):
        original = dep._Recorder.end_episode

        def end_episode(self, terminated):
            if terminated:  # only the partial episode is saved as terminated here
                os.kill(os.getpid(), signal.SIGINT)
            return original(self, terminated)

        monkeypatch.setattr(dep._Recorder, "end_episode", end_episode)

    code, out, err, rec = _deploy_stopped(monkeypatch, capsys, tmp_path, _ctrl_c(2, 4), patch)
    assert code == 130
    assert err.strip().splitlines() == [
        f"interrupted; deploy episode 2 of 3: robot stopped; saved 2 episode(s), 16 transitions "
        f"(the last one partial, 4 steps) to {rec}"
    ]
    assert "episode   1: return" in out
    np.testing.assert_array_equal(Dataset.open(rec).episodes()[:, 1], [12, 4])


def test_ctrl_c_while_an_episode_is_appended_lets_it_finish(tmp_path, monkeypatch, capsys):
    from simdist.data.dataset import Dataset

    def patch(dep):
        original = dep._Recorder.end_episode

        def end_episode(self, terminated):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while episode 1 is appended
            return original(self, terminated)

        monkeypatch.setattr(dep._Recorder, "end_episode", end_episode)

    code, out, err, rec = _deploy_stopped(monkeypatch, capsys, tmp_path, lambda ep, st: None, patch)
    assert code == 130
    assert out.splitlines()[0].startswith("episode   1: return") and "episode   2" not in out
    assert err.strip().splitlines() == [f"interrupted; deploy episode 2 of 3: robot stopped; saved 1 episode(s), "
                                        f"12 transitions to {rec}"]  # fmt: skip
    np.testing.assert_array_equal(Dataset.open(rec).episodes()[:, 1], [12])
