import subprocess
import sys

import pytest

from mlabel_exp.config import validate

from mlabel_exp.errors import ConfigError
from tests.conftest import compose_cfg


def test_default_config_validates():
    cfg = validate(compose_cfg())
    assert cfg.data.name == "synthetic" and cfg.data.val_fraction == 0.2


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def test_the_schema_holds_the_one_set_of_defaults_and_the_default_yaml_files_agree():
    """What `python -m mlabel_exp.run` uses unless told otherwise is what config.py's dataclasses say: a default YAML
    file that set another value (adam 1e-3 in the schema, adamw 4e-3 in conf/, once) would make the schema lie."""
    from omegaconf import OmegaConf

    from mlabel_exp.config import Config

    composed = OmegaConf.to_container(compose_cfg(), resolve=False)
    composed.pop("hydra", None)
    schema = _leaves(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))
    composed = _leaves(composed)
    assert {k: (composed.get(k), v) for k, v in schema.items() if composed.get(k) != v} == {}
    assert {k.split(".")[0] for k in set(composed) - set(schema)} == {"presets"}  # the presets' values: conf/ only
    assert (schema["optimizer.name"], schema["trainer.epochs"], schema["trainer.scheduler.name"]) == ("adamw", 20, "onecycle")


@pytest.mark.parametrize("override,setting", [
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.test_fraction=-0.1", "data.test_fraction"),
    ("data.synthetic.num_images=0", "data.synthetic.num_images"),
    ("data.crop_scale_min=0", "data.crop_scale_min"),
    ("data.num_workers=-4", "data.num_workers"),
    ("data.augment=autoaugment", "data.augment"),
    ("data.cutout=1.0", "data.cutout"),
    ("data.sampler=weighted", "data.sampler"),
    ("data.repeat_threshold=0", "data.repeat_threshold"),
    ("trainer.ema=3000", "trainer.ema"),
    ("trainer.ema=2days", "trainer.ema"),
    ("trainer.ema=true", "trainer.ema"),
    ("trainer.tta=hflip", "trainer.tta"),
])
def test_out_of_range_values_name_the_setting(override, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        validate(compose_cfg(override))


def test_unknown_key_and_wrong_type_fail_while_composing():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_cfg("data.val_fractoin=0.3")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("data.val_fraction=abc")


def test_folder_data_needs_a_root():
    with pytest.raises(ConfigError, match="data.root"):
        validate(compose_cfg("data=folder"))


def test_audit_counts(synthetic_root):
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.audit import audit

    index = build_index(synthetic_root)
    report = audit(index, decode=True)
    assert report.summary["images"] == 300
    assert report.per_class["images"].tolist() == index.labels.sum(0).tolist()
    assert report.cooccurrence.loc["circle", "circle"] == index.labels[:, index.classes.index("circle")].sum()
    assert sum(report.image_modes.values()) == 300 and report.image_sizes == {(64, 64): 300}
    assert report.findings == []  # the synthetic set's background images are a count, not a problem
    background = int((index.labels.sum(1) == 0).sum())
    assert report.summary["images with no label"].startswith(f"{background} ({background / 300:.1%}; background")


def test_audit_reports_unreadable_files(tree):
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.audit import audit

    root = tree([1, 2], {"cat.txt": "1\n"})
    (root / "images" / "im2.jpg").write_bytes(b"not a jpeg")
    assert any("im2.jpg: unreadable image" in p for p in audit(build_index(root)).problems)


@pytest.mark.integration
def test_inspect_command_prints_the_audit(synthetic_root, tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlabel_exp.inspect", "data=folder", f"data.root={synthetic_root}",
                          f"hydra.run.dir={tmp_path}", f"out={tmp_path / 'audit'}", "tracking.enabled=false"],
                         capture_output=True, text=True, check=True).stdout
    assert "images with no label" in out and "Co-occurrence" in out and "circle" in out
