"""Images/s of predict's model step on the CPU: torch eager (float32, and the run's precision) against the exported
ONNX model in onnxruntime, for smallcnn and resnet50 at their input sizes, batch 32.

Each is timed as predict runs it, from the same uint8 batches (the run's decoding already done, in memory) to
probabilities: the Predictor's normalisation on the batch, then the model. Eager is the Predictor as it replays a
default CPU run (channels_last, float32; the run's precision is bfloat16 autocast where the CPU has bfloat16
instructions, else float32 and skipped here); onnxruntime is inference.exported.OnnxPredictor on the file
``python -m mlabel_exp.export`` writes (the same export code, the same session settings: every graph optimisation,
one intra-op thread per core). The models are the config's (model=<name>: input size, head), with random weights
seeded 0: speed and arithmetic do not depend on trained values. Warm-up batches are not timed; each figure is the best
of a few timed rounds, the variants in alternation, each starting at a quiet moment. The largest probability difference to eager float32 is
printed against the parity tolerance of the export command (inference.parity).

    .venv/bin/python benchmarks/bench_inference.py [--models smallcnn resnet50] [--batch 32] [--rounds 3]

About 2 minutes on 2 cores (resnet50: ~1 s per image in eager float32 there).
"""

from __future__ import annotations

import argparse
import time

import _common

WARMUP_BATCHES = 1


def _images(size: int, batch: int):
    """``batch`` uint8 images of the synthetic set, decoded at ``size`` px as predict's workers deliver them."""
    import torch

    from mlabel_exp.data.images import image_steps, load_image

    root = _common.dataset(max(batch, 200))
    files = sorted((root / "images").iterdir())[:batch]
    steps = image_steps(size)
    return torch.stack([steps(load_image(f)) for f in files])


def _rates(variants: dict, images, rounds: int) -> tuple[dict, dict]:
    """({variant: images/s of ``probabilities(images)``, best of ``rounds``}, {variant: its output}): the variants in
    alternation, round after round, each after its warm-up and at a quiet moment, so that a load that comes and goes
    favours none."""
    outputs = {name: [p.probabilities(images) for _ in range(WARMUP_BATCHES)][-1] for name, p in variants.items()}
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, predictor in variants.items():
            _common.wait_for_quiet(10.0)
            start = time.perf_counter()
            outputs[name] = predictor.probabilities(images)
            best[name] = max(best[name], len(images) / (time.perf_counter() - start))
    return best, outputs


def _predictors(name: str):
    """(config of model=<name>, {variant: predictor or the reason it is skipped}, export seconds, exporter)."""
    import torch

    from mlabel_exp.inference import exported
    from mlabel_exp.inference.predictor import Predictor, preprocessing_of
    from mlabel_exp.models.zoo import build_model
    from mlabel_exp.runtime.precision import cpu_computes_bf16
    from tests.conftest import compose_cfg

    cfg = compose_cfg(f"model={name}", "model.weights=null").model
    torch.manual_seed(0)
    model = build_model(name, 14, hidden=cfg.hidden, input_size=cfg.input_size).eval()
    pre, classes = preprocessing_of(cfg), [f"c{i}" for i in range(14)]

    def eager(dtype):
        net = build_model(name, 14, hidden=cfg.hidden, input_size=cfg.input_size)
        net.load_state_dict(model.state_dict())
        net = net.eval().to(memory_format=torch.channels_last)
        return Predictor(net, pre, classes, amp_dtype=dtype, channels_last=True)

    start = time.perf_counter()
    proto, exporter = exported.to_onnx(model, cfg.input_size)
    export_s = time.perf_counter() - start
    meta = exported.read_metadata(exported.metadata(classes, [0.5] * 14, pre), "benchmark")
    variants = {"torch eager float32": eager(torch.float32),
                "torch eager bfloat16 autocast (the run's precision)": eager(torch.bfloat16) if cpu_computes_bf16()
                else "skipped: this CPU has no bfloat16 instructions, so a run computes in float32 here",
                "onnxruntime": exported.OnnxPredictor(exported.session(proto.SerializeToString()), meta)}
    return cfg, variants, export_s, exporter


def measure(name: str, batch: int, rounds: int) -> float | None:
    """Prints the figures of model ``name``; returns onnxruntime / eager float32."""
    import numpy as np
    import torch

    from mlabel_exp.inference.exported import cores
    from mlabel_exp.inference.parity import tolerance

    cfg, variants, export_s, exporter = _predictors(name)
    images = _images(cfg.input_size, batch)
    base = variants["torch eager float32"]
    tol, _ = tolerance(base.model, torch.float32)
    print(f"{name} at {cfg.input_size} px, batch {batch}: exported by {exporter} in {export_s:.1f} s; torch "
          f"{torch.get_num_threads()} threads, onnxruntime {cores()} intra-op threads", flush=True)
    for variant, reason in variants.items():
        if isinstance(reason, str):
            print(f"  {variant}: {reason}")
    rates, outputs = _rates({k: v for k, v in variants.items() if not isinstance(v, str)}, images, rounds)
    reference = outputs["torch eager float32"].numpy()
    for variant, rate in rates.items():
        diff = float(np.abs(outputs[variant].numpy() - reference).max())
        print(f"  {variant}: {rate:.1f} img/s = {rate / rates['torch eager float32']:.2f}x eager float32; "
              f"max |probability difference| to it {diff:.3g} (float32 parity tolerance {tol:.3g})", flush=True)
    return rates["onnxruntime"] / rates["torch eager float32"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smallcnn", "resnet50"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    ratios = {name: measure(name, args.batch, args.rounds) for name in args.models}
    print(_common.quiet_line())
    if "resnet50" in ratios:
        r = ratios["resnet50"]
        print(f"target onnxruntime/eager float32 >= 1.5x for resnet50 at batch {args.batch}: "
              f"{'met' if r >= 1.5 else 'NOT met'}")
    print("ratio onnxruntime/eager float32: " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))


if __name__ == "__main__":
    main()
