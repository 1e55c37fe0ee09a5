"""``python -m mlabel_exp.synthetic out=DIR [num_images=N ...]``: write the synthetic data set to a folder of your
own, in the real on-disk layout (images/imN.jpg, annotations/<class>.txt) or, with format=csv|onehot|coco|voc,
in another format with the same images and labels."""

from __future__ import annotations

from mlabel_exp.config import SyntheticCommandConfig, validate


def _main(cfg) -> None:
    from mlabel_exp.config import ConfigError, resolve_path
    from mlabel_exp.data.synthetic import PREVALENCE, generate, write_format

    typed: SyntheticCommandConfig = validate(cfg, SyntheticCommandConfig)
    out = resolve_path(typed.out)
    taken = [d for d in ("annotations", "images", "JPEGImages", "Annotations") if (out / d).exists()]
    if taken:
        raise ConfigError(f"out={typed.out}: {out} already holds {taken[0]}/; choose an empty folder")
    generate(out, typed)
    write_format(out, typed.format)
    data = {"folder": "folder", "onehot": "csv"}.get(typed.format, typed.format)
    print(f"wrote {typed.num_images} images with {len(PREVALENCE)} classes to {out} in the {typed.format} format; "
          f"train on it with: python -m mlabel_exp.run data={data} data.root={out}")


def main() -> None:
    from mlabel_exp.cli.app import command

    command(_main, "synthetic", SyntheticCommandConfig, "synthetic_schema")()


if __name__ == "__main__":
    main()
