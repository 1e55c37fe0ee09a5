"""Every command the product prints runs as printed: pasted into a shell it gives the program the words meant (values
holding a backslash, a space, ``;``, ``|`` or quotes survive), Hydra reads each override back as the value meant, and
the program named is this environment's (``python``, ``mlflow``), on the PATH or not."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mlabel_exp.render import shell

VALUES = ["IMAGE\\LABEL", "my data/x y", ";", "|", "a;b|c", "it's", 'say "x"', "both ' and \"", "C:\\dir\\", "x#y",
          "a,b", "x&y", "$HOME", "`ls`", "", "plain", "1e-4", "true", " lead"]


def hydra_value(token: str):
    override = OverridesParser.create().parse_override(token)
    return override.key_or_group, override.value()


def words_in_bash(line: str) -> list[str]:
    """The words bash hands the program of ``line`` (its first word replaced by printf: one word a record)."""
    rest = line.split(" ", 1)[1] if " " in line else ""
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {rest}"], capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


def is_this_environments(word: str, name: str) -> bool:
    found = shutil.which(word)
    return found is not None and Path(found).absolute().parent == Path(sys.executable).absolute().parent \
        and Path(found).name.startswith(name)


@pytest.mark.parametrize("value", VALUES)
def test_a_printed_override_reaches_hydra_as_the_value_meant(value):
    line = shell.module_command("run", shell.override("data.label_separator", value))
    argv = shlex.split(line)
    assert argv[1:3] == ["-m", "mlabel_exp.run"] and len(argv) == 4
    assert hydra_value(argv[3]) == ("data.label_separator", value)
    assert words_in_bash(line) == argv[1:]  # a real shell agrees with shlex


def test_the_programs_are_this_environments_on_the_path_or_not(monkeypatch):
    for path in (os.environ.get("PATH", ""), "/nonexistent"):
        monkeypatch.setenv("PATH", path)
        (python,) = shell.python()
        assert is_this_environments(python, "python") or python == sys.executable
        mlflow = shell.script("mlflow")
        assert is_this_environments(mlflow[0], "mlflow") or mlflow == [str(Path(sys.executable).parent / "mlflow")] \
            or mlflow == [sys.executable, "-m", "mlflow"]
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # an active virtual environment: the short names
    assert shell.python() == ["python"] and shell.script("mlflow") == ["mlflow"]


def test_inspects_next_command_is_the_data_settings_as_typed(monkeypatch):
    from mlabel_exp.experiment import inspect

    typed = ["data=csv", "data.root=/my data/x", "data.image_column=IMAGE\\LABEL", 'data.label_separator=";"',
             "data.csv_delimiter='|'", "trainer=smoke"]
    monkeypatch.setattr(inspect, "task_overrides", lambda: typed)
    argv = shlex.split(inspect.next_command())
    assert argv == [*shell.python(), "-m", "mlabel_exp.run", *typed[:-1]]
    assert [hydra_value(a)[1] for a in argv[-5:]] == ["csv", "/my data/x", "IMAGE\\LABEL", ";", "|"]


def test_the_ui_and_serve_commands_run_as_printed_for_a_store_with_a_space(tmp_path):
    from mlabel_exp.tracking.client import ui_command

    uri = f"sqlite:///{tmp_path / 'my store' / 'mlflow.db'}"
    argv = shlex.split(ui_command(uri))
    assert argv == [*shell.script("mlflow"), "ui", "--backend-store-uri", uri, "--workers", "1", "--port", "5000"]
    assert Path(shutil.which(argv[0]) or argv[0]).is_file()
    line = shell.environment({"MLFLOW_TRACKING_URI": uri}, "printenv", "MLFLOW_TRACKING_URI")
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True)
    assert done.stdout == uri + "\n"  # an assignment, not a command named 'MLFLOW_TRACKING_URI=...'


def test_a_runs_closing_block_names_a_ui_command_that_runs_and_the_runs_table(tmp_path):
    from mlabel_exp.cli.console import closing_block
    from mlabel_exp.tracking.client import VIEW_KEY

    uri = f"sqlite:///{tmp_path / 'a b;c' / 'mlflow.db'}"
    outcome = SimpleNamespace(objective=0.5, best_weights="raw", best_epoch=2, epochs=3, stopped_early=False,
                              held_out={}, out=tmp_path, run_id="0123456789abcdef", tracking_uri=uri,
                              experiment_id="7")
    block = closing_block(outcome).splitlines()[2:-1]  # after the rule and the best figure
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in block}
    assert shlex.split(lines["look"])[1:4] == ["ui", "--backend-store-uri", uri]
    assert lines["runs"] == (f"http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey={VIEW_KEY}"
                             "&workflowType=machine_learning")


def test_synthetic_prints_a_training_command_for_a_folder_with_a_space(tmp_path, monkeypatch, capsys):
    from mlabel_exp.cli.synthetic import main

    out = tmp_path / "my data;x"
    monkeypatch.setattr(sys, "argv", ["synthetic", shell.override("out", str(out)), "num_images=8", "image_size=16",
                                      "format=csv"])
    main()
    argv = shlex.split(capsys.readouterr().out.split("train on it: ", 1)[1])
    assert argv[:3] == [*shell.python(), "-m", "mlabel_exp.run"][:3]
    assert [hydra_value(a) for a in argv[-2:]] == [("data", "csv"), ("data.root", str(out))]
