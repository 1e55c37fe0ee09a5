"""``python -m mlabel_exp.synthetic out=DIR [num_images=N ...]``: write the synthetic data set to a folder of your
own, in the real on-disk layout (images/imN.jpg, annotations/<class>.txt)."""

from __future__ import annotations

from mlabel_exp.config import SyntheticCommandConfig, validate


def _main(cfg) -> None:
    from mlabel_exp.config import ConfigError, resolve_path
    from mlabel_exp.data.synthetic import PREVALENCE, generate

    typed: SyntheticCommandConfig = validate(cfg, SyntheticCommandConfig)
    out = resolve_path(typed.out)
    if (out / "annotations").exists() or (out / "images").exists():
        raise ConfigError(f"out={typed.out}: {out} already holds images/ or annotations/; choose an empty folder")
    generate(out, typed)
    print(f"wrote {typed.num_images} images and {len(PREVALENCE)} annotation files to {out}")


def main() -> None:
    from mlabel_exp.cli.app import command

    command(_main, "synthetic", SyntheticCommandConfig, "synthetic_schema")()


if __name__ == "__main__":
    main()
