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

#: Synthetic data sets are generated once and reused, keyed by their parameters (synthetic.cache_key).
CACHE = Path(os.environ.get("MLABEL_BENCH_CACHE", "/tmp/mlabel_bench"))

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def dataset(num_images: int, image_size: int = 128) -> Path:
    """The cached synthetic data root (images/ + annotations/), generated on first use."""
    from mlabel_exp.data.synthetic import SyntheticSpec, cache_key, ensure_generated

    spec = SyntheticSpec(num_images=num_images, image_size=image_size, seed=0)
    final = CACHE / "synthetic" / cache_key(spec)
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


def calibration() -> dict[str, float]:
    """This machine's speed, measured in the same run as the figures beside it, so that a reader can tell a slower
    machine from a slower program: float32 GFLOP/s of one 2048 x 2048 matmul, and torchvision resnet18 training
    images/s at 64 px, batch 16 (14 outputs, AdamW; CPU or the first GPU), with torch's default threads. Best of 3
    after a warm-up, each at a quiet moment (wait_for_quiet)."""
    import time

    import torch
    import torchvision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=14).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3, 64, 64, device=device), (torch.rand(16, 14, device=device) < 0.2).float()

    def matmul(n: int = 10) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            a @ b
        sync()
        return 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9

    def resnet18(steps: int = 20) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()
        return 16 * steps / (time.perf_counter() - t0)

    matmul(2), resnet18(3)  # warm-up
    best = {"matmul_gflops": 0.0, "resnet18_img_s": 0.0}
    for _ in range(3):
        wait_for_quiet(5.0)
        best["matmul_gflops"] = max(best["matmul_gflops"], matmul())
        best["resnet18_img_s"] = max(best["resnet18_img_s"], resnet18())
    best["device"] = device.type
    if device.type == "cpu":  # whether trainer.amp trains in bfloat16 here, about twice the float32 speed
        from mlabel_exp.runtime.precision import cpu_computes_bf16

        best["bf16"] = cpu_computes_bf16()
    return best


def calibration_line(c: dict | None = None) -> str:
    """One line of ``calibration()`` (measured now unless given)."""
    c = c or calibration()
    bf16 = {True: "; bfloat16 instructions: yes", False: "; bfloat16 instructions: no"}.get(c.get("bf16"), "")
    return (f"calibration ({c['device']}, this run): float32 matmul {c['matmul_gflops']:.0f} GFLOP/s, torchvision "
            f"resnet18 training {c['resnet18_img_s']:.0f} img/s (64 px, batch 16){bf16}")


CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET_SHARE = 0.2  # others' share of all cores below which the machine counts as quiet
WAIT_BUDGET_S = 60.0  # most time one script spends waiting for quiet, so that it stays under 5 minutes
waited_s = 0.0     # total time spent in wait_for_quiet, for the report


def system_busy_s() -> float:
    """CPU seconds all processes have spent running (every core), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK  # user nice system idle iowait irq softirq steal


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (its threads included), 0 if it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def others_share(busy_s: float, own_s: float, wall_s: float) -> float:
    """Share of all cores used by other processes over a window, from the machine's and our CPU time."""
    return max(0.0, busy_s - own_s) / (wall_s * len(os.sched_getaffinity(0)))


def wait_for_quiet(max_wait: float = 20.0, window: float = 1.0) -> float:
    """Wait (at most ``max_wait`` s, and WAIT_BUDGET_S per script) for a window in which other processes use
    < QUIET_SHARE of the cores; returns their share in the last window. Timed runs then start on a quiet
    machine, if there is one."""
    global waited_s
    start = time.perf_counter()
    max_wait = min(max_wait, WAIT_BUDGET_S - waited_s)
    while True:
        b0, o0 = system_busy_s(), proc_cpu_s(os.getpid())
        time.sleep(window)
        share = others_share(system_busy_s() - b0, proc_cpu_s(os.getpid()) - o0, window)
        if share < QUIET_SHARE or time.perf_counter() - start >= max_wait:
            waited_s += time.perf_counter() - start
            return share


def quiet_line() -> str:
    return (f"waited {waited_s:.0f} s in all for quiet moments (other processes < {QUIET_SHARE:.0%} of the cores "
            f"for 1 s; at most 20 s per measurement, {WAIT_BUDGET_S:.0f} s per script)")


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


def child_process_args(doc: str, default_images: int):
    """Arguments of a script that re-runs itself as measured children (``--child MODE --tmp DIR``)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--num-images", type=int, default=default_images)
    p.add_argument("--epochs", type=int, default=1, help="epochs per measured run (bench_overhead)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    return p.parse_args()
