"""A normal install: the wheel ships the package and its config tree, the installed commands train from an empty
directory (the project root is the working directory or $MLABEL_EXP_ROOT, never where the package lies), an editable
install reads the checkout's conf/, and a user's own config groups compose."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlabel_exp.config import CONF_DIR, project_root
from mlabel_exp.tracking.client import default_uri
from mlabel_exp.tracking.runs import git_commit
from tests.conftest import compose_cfg, mlflow_runs

REPO = Path(__file__).resolve().parents[1]


def copy_sources(dest: Path) -> Path:
    """What a build reads, copied: the build writes its build/ and *.egg-info beside them, not into the checkout."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("mlabel_exp", "conf"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "local"))
    return dest


def fresh_venv(folder: Path) -> Path:
    """A virtualenv without mlabel_exp that sees this interpreter's installed packages (torch, ...) through a .pth
    line instead of a reinstall. A path line only adds the folder to sys.path: the .pth files in it are not run, so
    an editable install of mlabel_exp there does not leak in. Returns the folder of its executables."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    purelib = subprocess.run([str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    parents = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
    (Path(purelib) / "parent_env.pth").write_text("\n".join(parents) + "\n")
    return folder / "bin"


def users_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH (the checkout) and no MLABEL_EXP_ROOT (conftest's)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLABEL_EXP_ROOT")}


def pip_install(bin_dir: Path, *args: str) -> None:
    """Offline, nothing else installed; --ignore-installed: never uninstalls the parent environment's mlabel-exp."""
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", *args], check=True, env=users_env(), capture_output=True, timeout=300)


def what_a_run_writes_in_the_checkout() -> dict[str, list[str]]:
    """The checkout's top-level entries and every file under its outputs/, multirun/ and mlruns/."""
    state = {".": sorted(p.name for p in REPO.iterdir() if p.name not in (".pytest_cache", "__pycache__"))}
    for name in ("outputs", "multirun", "mlruns"):
        state[name] = sorted(str(p) for p in (REPO / name).rglob("*")) if (REPO / name).is_dir() else []
    return state


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built as `pip wheel .` builds it (from this environment's setuptools, offline), from a copy of the
    sources holding a conf/local/default.yaml: machine-specific settings that must not be shipped."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_sources(tmp / "mlabel-exp")
    (src / "conf" / "local").mkdir()
    (src / "conf" / "local" / "default.yaml").write_text("# this machine's settings\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.mark.integration
def test_the_wheel_ships_every_module_every_config_file_and_a_script_per_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mlabel_exp").rglob("*.py")}
    configs = {f"mlabel_exp/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")
               if p.relative_to(CONF_DIR).parts[0] != "local"}
    missing = sorted((modules | configs) - names)
    assert not missing, f"not in the wheel (list their folders in pyproject.toml's packages): {missing}"
    assert not [n for n in names if n.startswith("mlabel_exp/conf/local/")]
    # every command (`python -m mlabel_exp.X`, a shim) is also installed as mlabel-X, calling the main it hands over to
    commands = sorted(p.stem for p in (REPO / "mlabel_exp").glob("*.py") if "__name__ == \"__main__\"" in p.read_text())
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", zipfile.ZipFile(wheel).read(entry_points).decode(), re.M))
    handed_to = {c: re.search(r"^from (mlabel_exp\.cli\.\w+) import main$", (REPO / "mlabel_exp" / f"{c}.py").read_text(),
                              re.M)[1] for c in commands}
    assert scripts == {f"mlabel-{c}": f"{handed_to[c]}:main" for c in commands}


CHECK_INSTALLED = """
import json, sys
import mlflow, pandas as pd
import mlabel_exp.config as config

mlflow.set_tracking_uri(sys.argv[1])
answer = mlflow.pyfunc.load_model(sys.argv[2]).predict(pd.DataFrame({"image": [open(sys.argv[3], "rb").read()]}))
print(json.dumps({"module": config.__file__, "conf": str(config.CONF_DIR), "columns": list(answer.columns),
                  "error": answer["error"][0]}))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_an_installed_wheel_trains_from_an_empty_directory_with_the_users_own_data_config(wheel, tmp_path):
    """`pip install mlabel_exp-*.whl`, then `mlabel-run` in an empty folder: outputs/ and mlruns/ appear there, the
    user's data/mydata.yaml (a --config-dir) is used, the run's pyfunc model answers, and the checkout is untouched."""
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, str(wheel))
    mine = tmp_path / "myconf"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "mydata.yaml").write_text("name: synthetic\nsynthetic: {num_images: 80, image_size: 32, seed: 5}\n")
    work = tmp_path.resolve() / "work"
    work.mkdir()
    before = what_a_run_writes_in_the_checkout()
    done = subprocess.run([str(bin_dir / "mlabel-run"), "--config-dir", str(mine), "data=mydata", "trainer=smoke",
                           "trainer.device=cpu", "model.input_size=32", "data.num_workers=0",
                           f"data.cache_dir={tmp_path / 'cache'}", "tracking.log_model=true",
                           "diagnostics.enabled=false"],  # diagnostics: tests/test_run.py, test_diagnostics.py
                          cwd=work, env=users_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in work.iterdir()) == ["mlruns", "outputs"] and (work / "mlruns" / "mlflow.db").is_file()
    client, (run,) = mlflow_runs(work, "synthetic (80 images, 32 px, seed 5)")  # the experiment: its data set
    assert run.info.status == "FINISHED"
    assert run.data.params["data.synthetic.seed"] == "5" and run.data.params["data.num_images"] == "80"  # mydata's
    assert Path(run.data.tags["output_dir"]).parent.parent == work / "outputs"
    assert "mlflow.source.git.commit" not in run.data.tags  # an installed copy is no checkout
    assert run.data.tags["mlabel.version"] == wheel.name.split("-")[1]
    assert what_a_run_writes_in_the_checkout() == before

    image = sorted((tmp_path / "cache").rglob("*.jpg"))[0]
    checked = subprocess.run([str(bin_dir / "python"), "-c", CHECK_INSTALLED, f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
                              f"runs:/{run.info.run_id}/model", str(image)],
                             cwd=work, env=users_env(), capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    installed = tmp_path / "venv" / "lib"
    assert Path(result["module"]).is_relative_to(installed) and Path(result["conf"]).is_relative_to(installed)
    classes = json.loads(Path(client.download_artifacts(run.info.run_id, "classes.json", str(tmp_path))).read_text())
    assert result["columns"] == [*classes, "labels", "error"] and result["error"] == ""


@pytest.mark.integration
def test_an_editable_install_reads_the_checkouts_conf(tmp_path):
    """`pip install -e .` (make setup): the commands read the checkout's own conf/, from any working directory."""
    src = copy_sources(tmp_path / "checkout")
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, "--no-build-isolation", "-e", str(src))
    (tmp_path / "work").mkdir()
    done = subprocess.run([str(bin_dir / "mlabel-run"), "--info", "searchpath"], cwd=tmp_path / "work", env=users_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf"\| main +\| file://{re.escape(str(src / 'conf'))} +\|", done.stdout), done.stdout


def test_the_project_root_is_mlabel_exp_root_else_the_working_directory_and_holds_every_output(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from mlabel_exp.config import register

    tmp_path = tmp_path.resolve()
    monkeypatch.delenv("MLABEL_EXP_ROOT")
    monkeypatch.chdir(tmp_path)
    assert project_root() == Path.cwd() and default_uri() == f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLABEL_EXP_ROOT", str(tmp_path / "elsewhere"))
    assert project_root() == tmp_path / "elsewhere"
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = compose("config", return_hydra_config=True).hydra
    assert Path(hydra.run.dir).parent.parent == tmp_path / "elsewhere" / "outputs"
    assert Path(hydra.sweep.dir).parent.parent == tmp_path / "elsewhere" / "multirun"


def test_a_users_own_config_group_composes_from_hydra_searchpath(tmp_path):
    (tmp_path / "mine" / "data").mkdir(parents=True)
    (tmp_path / "mine" / "data" / "mydata.yaml").write_text("name: folder\nroot: /data/photos\nval_fraction: 0.3\n")
    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'mine'}]", "data=mydata")
    assert (cfg.data.name, cfg.data.root, cfg.data.val_fraction) == ("folder", "/data/photos", 0.3)
    assert cfg.data.test_fraction == 0.0  # the rest from the schema's defaults


@pytest.mark.integration
def test_the_commit_is_recorded_only_for_a_package_tracked_in_a_git_checkout(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    assert git_commit(package) is None  # no checkout
    git("init", "-q")
    (tmp_path / "other.txt").write_text("x")
    git("add", "other.txt")
    git("commit", "-q", "-m", "other")
    assert git_commit(package) is None  # inside a checkout, but not tracked there (a virtualenv in a repository)
    git("add", "pkg")
    git("commit", "-q", "-m", "pkg")
    assert git_commit(package) == git("rev-parse", "HEAD")
