"""Every command takes key=value settings the same way: an unknown option, key or group option is one line with exit
status 2 (with the closest valid name), run ids and MLflow filters reach the command as typed, and --help is a page of
examples, printed without importing torch or mlflow."""

import importlib
import subprocess
import sys

import pytest

from mlabel_exp.cli import arguments
from mlabel_exp.config import CompareConfig, Config, SyntheticCommandConfig

COMMANDS = ("run", "predict", "compare", "search", "inspect", "synthetic", "diagnose", "export", "labels")
MODULES = {"run": "run", "predict": "predict", "compare": "compare", "search": "search", "inspect": "inspect_data",
           "synthetic": "synthetic", "diagnose": "diagnose", "export": "export", "labels": "labels"}
MODELS = "choices: inception, resnet18, resnet50, smallcnn, timm, vgg16"


def _error(capsys, command: str, *args: str) -> str:
    """``python -m mlabel_exp.<command> ARGS`` in this process, which must fail: its one line on stderr."""
    main = importlib.import_module(f"mlabel_exp.cli.{MODULES[command]}").main
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [command, *args])
        with pytest.raises(SystemExit) as e:
            main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):].strip()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_option_or_key_is_one_line_naming_it(command, capsys):
    assert _error(capsys, command, "--foo") == "--foo is not an option (settings are key=value; see --help)"
    assert _error(capsys, command, "--hlep") == "--hlep is not an option (did you mean --help?)"
    assert _error(capsys, command, "trackin.uri=x").startswith("trackin is not a setting")


@pytest.mark.parametrize("command", ["run", "search", "inspect"])
def test_a_wrong_group_option_is_one_line_with_the_choices(command, capsys):
    assert _error(capsys, command, "model=resnet5") == f"model=resnet5: no such model; did you mean resnet50? {MODELS}"
    assert _error(capsys, command, "experiment=nope") == "experiment=nope: no such experiment; choices: seed"
    assert _error(capsys, command, "modle.name=x") == "modle is not a setting (did you mean model?)"


def test_hydra_decides_group_options_when_another_config_folder_may_add_some(tmp_path, capsys):
    """With --config-dir the check is Hydra's own (it sees every folder), its error made the same one line."""
    (tmp_path / "model").mkdir()
    assert arguments.group_problems(["model=mine", "-cd", str(tmp_path)], {"model"}) == []
    for given in (["--config-dir", str(tmp_path)], [f"--config-dir={tmp_path}"], ["-cd", str(tmp_path)]):
        assert arguments.problems([*given, "model=mine"], Config) == []  # as the command line reaches the check
    assert _error(capsys, "inspect", "-cd", str(tmp_path), "model=resnet5") == \
        f"model=resnet5: no such model; did you mean resnet50? {MODELS}"


def test_errors_hydra_finds_while_composing_are_one_line(capsys):
    assert _error(capsys, "inspect", "trainer.epochs=abc") == \
        "trainer.epochs=abc: Value 'abc' of type 'str' could not be converted to Integer"
    assert _error(capsys, "inspect", "data=folder,synthetic") == "Ambiguous value for argument 'data=folder,synthetic'"
    assert _error(capsys, "synthetic", "num_images=3") == "out is required: give out=..."


def test_each_command_takes_the_config_groups_of_its_own_config():
    assert arguments.command_groups("config") == {"data", "model", "optimizer", "trainer", "loss", "tracking",
                                                  "experiment", "local"}
    assert arguments.command_groups("search") == arguments.command_groups("config") | {"search"}
    assert arguments.command_groups("compare") == arguments.command_groups("predict") == {"tracking"}
    assert arguments.command_groups("export") == {"tracking"}
    assert arguments.command_groups("synthetic") == set()
    assert arguments.problems(["model=resnet50"], CompareConfig, "compare") == [
        "model is not a setting (valid keys: sweep, filter, out, log_to_mlflow, register_best, wide, cost, tracking)"]
    assert arguments.aliased(["experiment=x", "-m"], CompareConfig) == ["tracking.experiment=x", "-m"]


def test_options_and_settings_are_told_apart():
    assert arguments.problems(["-m", "--cfg", "job", "-cd", "/x", "--info", "searchpath", "trainer.epochs=2",
                               "+model.extra=1", "~tracking.register", "hydra.job.chdir=false",
                               "presets.dropout.mine=0.1", "hydra/launcher=joblib", "+hydra/launcher=basic"],
                              Config) == []
    assert arguments.problems(["resnet50"], Config) == ["'resnet50' is not a setting (did you mean model=resnet50?)"]
    assert arguments.problems(["--sweep", "latest", "--filter", "params.a = 'b'", "--register-best=m",
                               "--tracking-uri", "sqlite:///x.db", "experiment=x"], CompareConfig, "compare") == [
        "--sweep is not an option: settings are key=value, here sweep=latest",
        "--filter is not an option: settings are key=value, here filter=\"params.a = 'b'\"",
        "--register-best is not an option: settings are key=value, here register_best=m",
        "--tracking-uri is not an option: settings are key=value, here tracking.uri=sqlite:///x.db"]
    assert arguments.problems(["--num-images", "12", "prefix=x"], SyntheticCommandConfig, "synthetic") == [
        "--num-images is not an option: settings are key=value, here num_images=12",
        "prefix is not a setting (valid keys: num_images, image_size, seed, unlabeled_fraction, grayscale_fraction, "
        "max_objects, out, format)"]


@pytest.mark.parametrize("value", ["params.model = 'resnet50'", "tags.sweep_id LIKE '%a,b%'", "0123", "1e5", "12",
                                   "metrics.`val/best_mAP` > 0.5", "a\\b", "x\\'y\\", "latest", "true"])
def test_run_ids_and_filters_reach_the_command_as_typed(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (arg,) = arguments.verbatim([f"filter={value}"])
    assert OverridesParser.create().parse_override(arg).value() == value
    assert arguments.verbatim(["run=latest", "trainer.epochs=12"]) == ["run=latest", "trainer.epochs=12"]


@pytest.mark.integration
@pytest.mark.parametrize("command, expected", [
    ("run", ("-m model=resnet50,vgg16,inception", "resume=latest", "model: inception, resnet18, resnet50",
             "dropout=none|light|standard|heavy|model|<number>", "python -m mlabel_exp.compare sweep=latest")),
    ("predict", ("run=latest input=", "run=best", "checkpoint=", "threshold=tuned|<number>", "model=<file>.onnx")),
    ("export", ("run=latest", "format=onnx", "exporter=auto|dynamo|legacy", "pip install mlabel-exp[export]")),
    ("compare", ("sweep=latest", "filter=\"params.model.name = 'resnet50'\"", "register_best=NAME", "log_to_mlflow")),
    ("search", ("search.n_trials=40", "search=regularisation", "model: inception, resnet18, resnet50")),
    ("inspect", ("data=folder data.root=/path/to/data", "data.verify_images=true")),
    ("synthetic", ("out=/tmp/syn", "num_images=20000 image_size=128 seed=0", "grayscale_fraction=F")),
    ("diagnose", ("run=latest", "run=best", "diagnostics.gallery_classes=N", "log_to_run=true|false")),
    ("labels", ("run=latest", "data.folds=5 data.fold=0,1,2,3,4", "per_class=8", "log_to_run=true|false")),
])
def test_help_is_a_page_of_examples_and_settings_without_importing_torch(help_pages, command, expected):
    page = help_pages["pages"][command]
    assert page.startswith(f"python -m mlabel_exp.{command} ") and len(page.splitlines()) < 50 and "Examples" in page
    for line in expected:
        assert line in page, line
    assert help_pages["heavy"] == []  # after every command's --help, in one fresh process


#: Every command's --help in one fresh process (what `python -m mlabel_exp.<command> --help` runs), then the heavy
#: libraries that process imported.
HELP_PAGES = """
import contextlib, io, json, sys
from hydra.core.global_hydra import GlobalHydra
pages = {}
for command in sys.argv[1:]:
    module = __import__(f"mlabel_exp.{command}", fromlist=["main"])
    sys.argv, page = [f"mlabel_exp/{command}.py", "--help"], io.StringIO()
    with contextlib.redirect_stdout(page):
        try:
            module.main()
        except SystemExit as e:
            assert e.code in (None, 0), (command, e.code)
    GlobalHydra.instance().clear()
    pages[command] = page.getvalue()
print(json.dumps({"pages": pages, "heavy": sorted(m for m in ("torch", "mlflow", "pandas", "matplotlib")
                                                  if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def help_pages():
    import json

    commands = ["run", "predict", "export", "compare", "search", "inspect", "synthetic", "diagnose", "labels"]
    done = subprocess.run([sys.executable, "-c", HELP_PAGES, *commands], capture_output=True, text=True, check=True,
                          timeout=120)
    return json.loads(done.stdout.splitlines()[-1])
