"""``python -m mlabel_exp.synthetic``: write the synthetic data set to a folder of your own."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlabel_exp.data.synthetic import PREVALENCE, SyntheticSpec, generate


def main(argv: list[str] | None = None) -> None:
    defaults = SyntheticSpec()
    p = argparse.ArgumentParser(
        prog="python -m mlabel_exp.synthetic",
        description="Write the synthetic multi-label data set in the real on-disk layout "
                    "(images/imN.jpg, annotations/<class>.txt).")
    p.add_argument("--out", required=True, help="output folder (created; must not hold a data set)")
    p.add_argument("--num-images", type=int, default=defaults.num_images, help="number of images (%(default)s)")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="side in pixels (%(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed (%(default)s)")
    p.add_argument("--unlabeled-fraction", type=float, default=defaults.unlabeled_fraction,
                   help="share of images drawn with no object (%(default)s)")
    p.add_argument("--grayscale-fraction", type=float, default=defaults.grayscale_fraction,
                   help="share of images saved as grayscale JPEG (%(default)s)")
    args = p.parse_args(argv)
    if args.num_images < 1 or args.image_size < 16:
        p.error("--num-images must be >= 1 and --image-size >= 16")
    out = Path(args.out)
    if (out / "annotations").exists() or (out / "images").exists():
        p.error(f"{out} already holds images/ or annotations/; choose an empty folder")
    spec = SyntheticSpec(args.num_images, args.image_size, args.seed,
                         args.unlabeled_fraction, args.grayscale_fraction)
    generate(out, spec)
    print(f"wrote {spec.num_images} images and {len(PREVALENCE)} annotation files to {out}")


if __name__ == "__main__":
    main()
