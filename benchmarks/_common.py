"""Shared by the benchmark scripts: cached synthetic data sets, small timing helpers, and faithful
re-implementations of the original course project's data code (the baselines).

The baselines are deliberately as slow as the original: labels found by membership tests in Python
lists, images resized by PIL through classic torchvision transforms on every epoch.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # for tests.conftest.compose_cfg
    sys.path.insert(0, str(REPO))

#: Synthetic data sets are generated once and reused, keyed by their parameters (SyntheticSpec.key()).
CACHE = Path(os.environ.get("MLABEL_BENCH_CACHE", "/tmp/mlabel_bench"))

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def dataset(num_images: int, image_size: int = 128) -> Path:
    """The cached synthetic data root (images/ + annotations/), generated on first use."""
    from mlabel_exp.synthetic import SyntheticSpec, ensure_generated

    spec = SyntheticSpec(num_images=num_images, image_size=image_size, seed=0)
    final = CACHE / "synthetic" / spec.key()
    if not (final / "annotations").is_dir():
        print(f"generating {num_images} synthetic images of {image_size} px into {final} (once) ...", flush=True)
        start = time.perf_counter()
        ensure_generated(CACHE, spec)
        print(f"  generated in {time.perf_counter() - start:.1f} s", flush=True)
    return final


def warm_page_cache(root: Path) -> None:
    """Read every file once, so that no timed run pays for the first disk read and none is favoured."""
    for folder in ("images", "annotations"):
        with os.scandir(root / folder) as entries:
            for e in entries:
                with open(e.path, "rb") as f:
                    f.read()


def machine_line() -> str:
    """Context for the figures: cores and the load left by other processes at the start."""
    load = os.getloadavg()
    return (f"machine: {len(os.sched_getaffinity(0))} cores available, load average {load[0]:.2f} / {load[1]:.2f} "
            f"(1 / 5 min) at start; other processes may share the CPU")


def best_and_median(times: list[float]) -> str:
    return f"best {min(times):.3f} s, median {statistics.median(times):.3f} s of {len(times)}"


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc (psutil is not installed)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


# ---------------------------------------------------------------- the original project's data code

def original_index(root: str | Path) -> tuple[list[str], list[tuple[str, list[int]]]]:
    """The original Dataset's construction: for each image number, a membership test in every class's
    list of lines (a Python list, so each test scans it): O(images x annotation lines). Unlabelled
    images are dropped, as the original did."""
    root = str(root)
    ann_dir = os.path.join(root, "annotations")
    classes = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith(".txt"))
    lines = {}
    for c in classes:
        with open(os.path.join(ann_dir, c + ".txt")) as f:
            lines[c] = [line.strip() for line in f.readlines()]
    num_images = len(os.listdir(os.path.join(root, "images")))
    samples = []
    for i in range(1, num_images + 1):
        label = []
        for c in classes:
            if str(i) in lines[c]:
                label.append(1)
            else:
                label.append(0)
        if sum(label) > 0:
            samples.append(("im" + str(i) + ".jpg", label))
    return classes, samples


def original_transform(input_size: int):
    """Classic (v1) torchvision transforms on PIL images: PIL resizes every image to the model size."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((input_size, input_size)), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class OriginalDataset:
    """The original ``__getitem__``: PIL open, ``.convert('RGB')``, classic transforms; (image, label) tuples."""

    def __init__(self, image_dir: str | Path, samples: list[tuple[str, list[int]]], input_size: int):
        self.image_dir = str(image_dir)
        self.samples = samples
        self.transform = original_transform(input_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        name, label = self.samples[i]
        image = Image.open(os.path.join(self.image_dir, name)).convert("RGB")
        return self.transform(image), torch.tensor(label, dtype=torch.float32)
