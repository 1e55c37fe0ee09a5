"""The cost of weight averaging (``trainer.ema``) against a training step, both measured in the same run.

A training step is what the Trainer does per batch (forward, BCE loss, backward, AdamW step; channels_last, as a run
on this device has it) on random tensors at batch 32; the averaging is ``training.ema.WeightAverage.update()`` after
it (torch's AveragedModel: one fused lerp over every parameter and BatchNorm buffer). Models: smallcnn at 64 px (the
quickstart's), timm's tf_efficientnet_lite0 at 128 px (the study's, where timm is installed) and resnet50 at 128 px.
Each is timed in alternating rounds (steps, then as many updates), each round at a quiet moment; the best round of
each is kept. The target: the update costs at most 3% of a step.

    .venv/bin/python benchmarks/bench_ema.py [--models smallcnn timm:tf_efficientnet_lite0 resnet50] [--rounds 3]

About a minute on 2 cores; a CUDA GPU is used where there is one (synchronised around each timing).
"""

from __future__ import annotations

import argparse
import time

import _common

BATCH = 32
SIZES = {"smallcnn": 64}  # every other model: 128 px


def _setup(key: str, device):
    """(one training step, the average's update, the parameter count) of model ``key`` on ``device``."""
    import torch

    from mlabel_exp.models.zoo import build_model
    from mlabel_exp.training.ema import WeightAverage
    from mlabel_exp.training.optim import build_optimizer

    size = SIZES.get(key, 128)
    torch.manual_seed(0)
    net = build_model(key, 14, input_size=size).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer("adamw", [{"params": list(net.parameters())}], lr=1e-4, weight_decay=1e-4,
                                fused=device.type == "cuda")
    x = torch.randn(BATCH, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(BATCH, 14, device=device) < 0.2).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    average = WeightAverage(net, 0.9997)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        loss_fn((out[0] if isinstance(out, tuple) else out).float(), y).backward()
        optimizer.step()

    return step, average.update, sum(p.numel() for p in net.parameters())


def _best_seconds(fn, n: int, sync, rounds: list[float]) -> None:
    """Appends the seconds per call of ``n`` calls of ``fn`` (after a quiet moment) to ``rounds``."""
    _common.wait_for_quiet(10.0)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    rounds.append((time.perf_counter() - start) / n)


def measure(key: str, device, rounds: int) -> dict:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step, update, params = _setup(key, device)
    step(), update(), step(), update()  # warm-up: allocations, the first (copying) update
    start = time.perf_counter()
    step()
    n = max(3, min(50, int(2.0 / max(time.perf_counter() - start, 1e-4))))  # about 2 s of steps a round
    steps, updates = [], []
    for _ in range(rounds):
        _best_seconds(step, n, sync, steps)
        _best_seconds(update, n, sync, updates)
    return {"model": key, "params": params, "steps": n, "step_s": min(steps), "update_s": min(updates),
            "step_rounds": steps, "update_rounds": updates}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smallcnn", "timm:tf_efficientnet_lite0", "resnet50"])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    import importlib.util

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    models = [m for m in args.models if not m.startswith("timm:") or importlib.util.find_spec("timm")]
    results = []
    for key in models:
        r = measure(key, device, args.rounds)
        results.append(r)
        print(f"{key} at {SIZES.get(key, 128)} px, batch {BATCH}, {r['params'] / 1e6:.1f} M parameters, {device.type}: "
              f"training step {r['step_s'] * 1e3:.1f} ms, EMA update {r['update_s'] * 1e3:.2f} ms "
              f"({r['update_s'] / r['step_s']:.2%} of a step; best of {args.rounds} rounds of {r['steps']}: steps "
              f"{', '.join(f'{s * 1e3:.1f}' for s in r['step_rounds'])} ms, updates "
              f"{', '.join(f'{s * 1e3:.2f}' for s in r['update_rounds'])} ms)", flush=True)
    print(_common.quiet_line())
    worst = max(results, key=lambda r: r["update_s"] / r["step_s"])
    ratio = worst["update_s"] / worst["step_s"]
    print(f"target EMA update <= 3% of a training step: {'met' if ratio <= 0.03 else 'NOT met'}")
    print(f"ratio EMA update / training step: {ratio:.2%} at most ({worst['model']})")


if __name__ == "__main__":
    main()
