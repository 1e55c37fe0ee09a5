"""On a GPU: does our input pipeline keep resnet50 training busy?

Measures, in one process on one GPU:
  1. resnet50 training images/s on in-memory GPU tensors (forward + backward + AdamW, fused on CUDA as a run
     has it, bfloat16 autocast, channels_last): what the model consumes; optionally also with torch.compile
     (--compile);
  2. images/s each pipeline delivers to the GPU ready to train (loaded, copied, scaled, flipped and
     normalised on the device), with nothing training: our decoded cache at the input size and at the
     stored 128 px (resized on the GPU), our decoding pipeline, and the original project's pipeline
     (PIL resize + float tensors in the workers), each with its default worker count;
  3. our Trainer's own training epoch (engine.Trainer.train_epoch) with the cached loader: the end-to-end
     images/s, which the loader or the Trainer slows if it is below 1x of (1).
The last two lines: (2), our default training pipeline, against (1) (target >= 2x), and (3) against (1)
(target >= 0.90x).

    python benchmarks/bench_gpu.py [--num-images 10000] [--size 224] [--batch 128] [--compile]
"""

from __future__ import annotations

import argparse
import time

import _common


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def model_rate(device, size: int, batch: int, steps: int, compile: bool = False) -> tuple[float, float]:
    """(images/s, seconds of warm-up) of resnet50 training on random GPU tensors."""
    import torch
    import torchvision

    from mlabel_exp.training import optim

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=14).to(device, memory_format=torch.channels_last).train()
    run = torch.compile(model) if compile else model
    opt = optim.build_optimizer("adamw", [{"params": list(model.parameters())}], 1e-4, 0.01,
                                   fused=device.type == "cuda")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 14, device=device) < 0.2).float()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(5):
        step()
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start), warm


def delivered_rate(device, loader, prepare, batches: int) -> float:
    """Images/s of ready-to-train batches on the GPU, after 3 warm-up batches."""
    it = iter(loader)
    for _ in range(3):
        next(it)
    sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        b = next(it)
        x = b["image"] if isinstance(b, dict) else b[0]
        x = prepare(x.to(device, non_blocking=True))
        seen += len(x)
    sync(device)
    return seen / (time.perf_counter() - start)


class InMemory:
    """One ready batch, already on the device, served as an epoch of as many batches as the real loader has."""

    sampler = generator = None

    def __init__(self, loader, device):
        self.n = len(loader)
        self.batch = next(iter(loader))
        self.batch["image"] = self.batch["image"].to(device)
        self.batch["target"] = self.batch["target"].to(device)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([self.batch] * self.n)

    def set_epoch(self, epoch: int) -> None:
        pass


def trainer_rate(device, index, loader, size: int, batch: int, max_steps: int, fused: bool) -> tuple[float, int]:
    """Images/s of engine.Trainer.train_epoch over ``loader``, second epoch (the first warms up cudnn and workers)."""
    import torch

    from mlabel_exp.training import optim
    from mlabel_exp.training import trainer as engine
    from mlabel_exp.models.zoo import build_model
    from mlabel_exp.data.images import BatchTransform
    from mlabel_exp.config import TrainerConfig

    torch.manual_seed(0)
    net = build_model("resnet50", len(index.classes), hidden=1024, dropout=0.4, input_size=size).to(device)
    cfg = TrainerConfig(epochs=2, batch_size=batch, progress="none", checkpoint=False, max_steps_per_epoch=max_steps)
    optimizer = optim.build_optimizer("adamw", [{"params": list(net.parameters())}], 1e-4, 0.01, fused=fused)
    trainer = engine.Trainer(net, optimizer, cfg, device=device, classes=index.classes,
                             batch_transform=BatchTransform(size, hflip=True))
    trainer.train_epoch(loader, 1)
    return trainer.train_epoch(loader, 2)["throughput/img_s"], min(len(loader), max_steps or len(loader))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=10000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed model steps")
    p.add_argument("--batches", type=int, default=60, help="timed loader batches")
    p.add_argument("--train-steps", type=int, default=0, help="steps of the Trainer's timed epoch (0: a whole epoch)")
    p.add_argument("--compile", action="store_true", help="also time resnet50 under torch.compile")
    p.add_argument("--trainer-variants", action="store_true",
                   help="also time the Trainer on an in-memory batch, unpinned, with more workers, with AdamW not fused")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script out")
    args = p.parse_args()

    import tempfile

    import torch
    from torch.utils.data import DataLoader

    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.images import BatchTransform, image_steps
    from mlabel_exp.data.loaders import CachedImages, MultiLabelImages, default_workers, make_loader
    from mlabel_exp.data import cache as image_cache

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'CPU'}, batch {args.batch}, "
          f"{args.size} px")
    root = _common.dataset(args.num_images)
    _common.warm_page_cache(root)
    index = build_index(root)
    rows = list(range(len(index)))
    size, batch = args.size, args.batch
    rate, warm = model_rate(device, size, batch, args.steps)
    print(f"resnet50 training, in-memory tensors, bf16 autocast, channels_last: {rate:.0f} img/s "
          f"(first 5 steps {warm:.1f} s)")
    if args.compile:
        crate, cwarm = model_rate(device, size, batch, args.steps, compile=True)
        print(f"resnet50 training under torch.compile: {crate:.0f} img/s ({crate / rate:.2f}x eager; "
              f"first 5 steps incl. compiling {cwarm:.1f} s)")

    prepare = BatchTransform(size, hflip=True)
    prepare_train = lambda x: prepare(x, train=True)  # noqa: E731
    decode_workers = default_workers(-1)
    cache_workers = default_workers(-1, cached=True, cuda=cuda)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stored in (size, 128):
            start = time.perf_counter()
            cache = image_cache.open_or_build(index, stored, tmp, threads=decode_workers, required=True)
            built = time.perf_counter() - start
            print(f"decoded cache at {stored} px built in {built:.1f} s with {decode_workers} threads")
            for workers in sorted({cache_workers, 2 * cache_workers}) if stored == size else (cache_workers,):
                loader = make_loader(CachedImages.from_index(cache, index, rows), batch, shuffle=True,
                                     num_workers=workers, pin_memory=cuda, persistent=True)
                rate_w = delivered_rate(device, loader, prepare_train, args.batches)
                name = f"ours, decoded cache at {stored} px"
                results.setdefault(name, rate_w)  # the default worker count is the figure
                print(f"{name}, {workers} workers: {rate_w:.0f} img/s")
                del loader
        loader = make_loader(MultiLabelImages.from_index(index, rows, image_steps(size, train=True)), batch,
                             shuffle=True, num_workers=decode_workers, pin_memory=cuda, persistent=True)
        name = "ours, decoding JPEGs every epoch"
        results[name] = delivered_rate(device, loader, prepare_train, args.batches)
        print(f"{name} ({decode_workers} workers): {results[name]:.0f} img/s")
        del loader
        samples = [(f, [int(v) for v in index.labels[r]]) for r, f in enumerate(index.files)]
        original = DataLoader(_common.OriginalDataset(root / "images", samples, size), batch_size=batch, shuffle=True,
                              num_workers=decode_workers, pin_memory=cuda)
        name = "original pipeline"
        results[name] = delivered_rate(device, original, lambda x: x, args.batches)
        print(f"{name} ({decode_workers} workers): {results[name]:.0f} img/s")
        del original

        cache = image_cache.open_or_build(index, size, tmp, required=True)
        ds = CachedImages.from_index(cache, index, rows)
        # what a run does: the cached loader, pinned, and on CUDA fused AdamW (optim.optimizer)
        variants = {"cached loader (the default)": dict(workers=cache_workers, pin=cuda, fused=cuda)}
        if args.trainer_variants:
            variants.update({"in-memory batch, no loader": dict(in_memory=True, fused=cuda),
                             "cached loader, unpinned": dict(workers=cache_workers, pin=False, fused=cuda),
                             f"cached loader, {2 * cache_workers} workers": dict(workers=2 * cache_workers, pin=cuda,
                                                                                fused=cuda),
                             "cached loader, AdamW not fused": dict(workers=cache_workers, pin=cuda, fused=False)})
        trainer = {}
        for name, v in variants.items():
            loader = InMemory(make_loader(ds, batch, shuffle=True, num_workers=0), device) if v.get("in_memory") else \
                make_loader(ds, batch, shuffle=True, num_workers=v["workers"], pin_memory=v["pin"], persistent=True)
            img_s, steps = trainer_rate(device, index, loader, size, batch, args.train_steps, v.get("fused", False))
            trainer[name] = img_s
            print(f"our Trainer, resnet50 (hidden 1024), {name}: second epoch ({steps} steps, its start included) "
                  f"{img_s:.0f} img/s = {img_s / rate:.2f}x the model on in-memory tensors")
            del loader
    ours = results[f"ours, decoded cache at {size} px"]
    print(f"ours/original delivered to the GPU: {ours / results['original pipeline']:.1f}x")
    print(f"target loader/resnet50 >= 2x: {'met' if ours / rate >= 2 else 'NOT met'}")
    print(f"ratio loader/resnet50 on the GPU: {ours / rate:.1f}x ({ours:.0f} vs {rate:.0f} img/s)")
    default = trainer["cached loader (the default)"] / rate
    print(f"target Trainer epoch (default loader)/resnet50 >= 0.90: {'met' if default >= 0.9 else 'NOT met'} "
          f"({default:.2f}x)")


if __name__ == "__main__":
    main()
