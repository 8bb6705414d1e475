"""A stage never shares its outputs with a second writer, never outlives its dvc, and what a
killed writer left behind is cleared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from salis.artifacts.atomic import remove_stale_temp
from salis.errors import SalisError
from salis.pipeline.guard import stage_lock
from support import new_project, run

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_of_a_stage_is_refused_with_the_holders_pid(tmp_path: Path):
    with stage_lock(tmp_path, "train@c1"):
        with pytest.raises(SalisError, match=rf"pid {os.getpid()}\) is running train@c1.*kill {os.getpid()}"):
            with stage_lock(tmp_path, "train@c1"):
                pass
        with stage_lock(tmp_path, "train@c2"):  # another stage is another lock
            pass
    with stage_lock(tmp_path, "train@c1"):  # released on exit
        pass


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path):
    models = tmp_path / "models" / "cycle_1"
    models.mkdir(parents=True)
    dead = models / f".model.pt.{dead_pid()}.a1b2c3d4.tmp"
    dead.write_bytes(b"half a checkpoint")
    dead_dir = models / f".live.{dead_pid()}.x_y9.tmp"
    (dead_dir / "plots").mkdir(parents=True)
    live = models / f".model.pt.{os.getpid()}.zz11.tmp"
    live.write_bytes(b"being written")
    other = models / ".notes.tmp"  # not ours: no pid in the name
    other.write_text("x")
    removed = remove_stale_temp([tmp_path / "models", tmp_path / "absent"])
    assert sorted(removed) == sorted([dead, dead_dir])
    assert not dead.exists() and not dead_dir.exists() and live.exists() and other.exists()


STAGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from salis.artifacts.atomic import atomic_path
    from salis.pipeline.runner import run_stage

    def slow(params, layout):
        with atomic_path(Path("models/cycle_1/model.pt")) as tmp:
            tmp.write_bytes(b"partial")
            Path("started").write_text("1")
            time.sleep(60)

    sys.exit(run_stage("train", slow, argv=["--params", sys.argv[1]]))
    """
)
PARENT = textwrap.dedent(
    """
    import shlex, subprocess, sys, time
    stage = [sys.executable, "stage.py", sys.argv[1]]
    if sys.argv[2] == "shell":  # as dvc runs it: through /bin/sh, which forks (`; :` keeps any shell from exec-ing)
        stage = ["/bin/sh", "-c", shlex.join(stage) + "; :"]
    subprocess.Popen(stage)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("launch", ["direct", "shell"])
def test_a_stage_ends_when_its_parent_is_killed_and_leaves_no_partial_output(tmp_path: Path, launch: str):
    """kill -9 of the parent (dvc's place), whether it ran the stage itself or through a shell
    that stays alive: the stage gets SIGTERM and cleans up its temp file."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "parent.py").write_text(PARENT)
    params = ROOT / "params.yaml"
    parent = subprocess.Popen([sys.executable, "parent.py", str(params), launch], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and parent.poll() is None, "the stage never started"
        time.sleep(0.1)
    temps = list((tmp_path / "models" / "cycle_1").glob(".model.pt.*.tmp"))
    assert len(temps) == 1
    stage_pid = int(temps[0].name.split(".")[3])
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{stage_pid}").exists() and _state(stage_pid) != "Z":
        assert time.monotonic() < deadline, "the stage outlived its parent"
        time.sleep(0.1)
    assert not (tmp_path / "models" / "cycle_1" / "model.pt").exists()
    assert list((tmp_path / "models" / "cycle_1").iterdir()) == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "Z"


def test_stage_warnings_print_as_one_clean_line(tmp_path: Path):
    """A library warning reaches the user as `salis <stage>: warning: ...`, not with a source line."""
    script = textwrap.dedent(
        """
        import sys, warnings
        from salis.pipeline.runner import run_stage

        def noisy(params, layout):
            warnings.warn("data/x.json: dropped 4 annotation(s)", UserWarning, stacklevel=2)

        sys.exit(run_stage("prepare", noisy, argv=["--params", sys.argv[1]]))
        """
    )
    (tmp_path / "stage.py").write_text(script)
    done = subprocess.run([sys.executable, "stage.py", str(ROOT / "params.yaml")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stderr == "salis prepare: warning: data/x.json: dropped 4 annotation(s)\n"


@pytest.mark.slow
def test_killing_dvc_mid_stage_leaves_no_orphan_writer(tmp_path: Path):
    """kill -9 of `dvc repro` during train@c1: the trainer ends with it, nothing half-written
    stays, and the next `dvc repro` finishes the cycle."""
    work = new_project(tmp_path, {"train": {"min_iterations": 400, "max_iterations": 400},
                                  "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}}})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    dvc = subprocess.Popen(["dvc", "repro"], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cycle_dir = work / "models" / "cycle_1"
    deadline = time.monotonic() + 300
    while not list(cycle_dir.glob(".live.*.tmp")):  # train@c1 is writing its dvclive folder
        assert dvc.poll() is None and time.monotonic() < deadline, "train@c1 never started"
        time.sleep(0.2)
    trainer = int(next(cycle_dir.glob(".live.*.tmp")).name.split(".")[2])
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait()
    deadline = time.monotonic() + 30
    while _state(trainer) != "Z":
        assert time.monotonic() < deadline, "the trainer outlived dvc"
        time.sleep(0.2)
    assert not (cycle_dir / "model.pt").exists() and not list(cycle_dir.glob(".*.tmp"))
    # the rerun need not train 400 iterations again to show that nothing blocks it
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(min_iterations=4, max_iterations=4)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], work)
    assert (cycle_dir / "model.pt").is_file() and not list(work.rglob(".*.tmp"))
