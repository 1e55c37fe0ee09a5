"""Data audit: ``python -m mlabel_exp.inspect [data=folder data.root=PATH]``.

Class counts, unlabeled images, label cardinality, grayscale images, image sizes, class co-occurrence and
every problem found, printed before any training (a run logs its own index problems and skipped images).
"""

from __future__ import annotations


def _main(cfg) -> None:
    from mlabel_exp.config import validate
    from mlabel_exp.data.audit import audit
    from mlabel_exp.data.formats import index_from_config

    validate(cfg)
    index = index_from_config(cfg.data)
    print(audit(index, decode=cfg.data.verify_images).to_text())


def main() -> None:
    from mlabel_exp.cli.app import command

    command(_main, "inspect")()


if __name__ == "__main__":
    main()
