"""``python -m mlabel_exp.synthetic out=DIR [num_images=N ...]``: write the synthetic data set to a folder of your
own, in the real on-disk layout (images/imN.jpg, annotations/<class>.txt) or, with format=csv|onehot|coco|voc,
in another format with the same images and labels."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import SyntheticCommandConfig, resolve_path, validate
from mlabel_exp.errors import ConfigError
from mlabel_exp.render.shell import module_command, override


def _main(cfg) -> None:
    from mlabel_exp.data.synthetic import PREVALENCE, generate, write_format

    typed: SyntheticCommandConfig = validate(cfg, SyntheticCommandConfig)
    out = resolve_path(typed.out)
    if any((out / d).exists() for d in ("annotations", "images", "Annotations", "JPEGImages")):
        raise ConfigError(f"out={typed.out}: {out} already holds images/ or annotations/ (or a VOC devkit); "
                          "choose an empty folder")
    generate(out, typed)
    write_format(out, typed.format)
    data = "csv" if typed.format == "onehot" else typed.format
    what = "annotation files" if typed.format == "folder" else f"classes in the {typed.format} format"
    print(f"wrote {typed.num_images} images and {len(PREVALENCE)} {what} to {out}; "
          f"train on it: {module_command('run', override('data', data), override('data.root', str(out)))}")


def main() -> None:
    command(_main, "synthetic", SyntheticCommandConfig, "synthetic_schema")()


if __name__ == "__main__":
    main()
