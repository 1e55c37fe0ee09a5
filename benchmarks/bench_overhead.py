"""What the framework costs on top of the training itself: one epoch through ``mlabel_exp.run.train(cfg)``
(index, split, MLflow run, metrics, checkpoints, thresholds, figures, predictions, pyfunc model) against
a bare hand-written PyTorch loop over the same data.

Every measurement runs in a fresh subprocess that has already imported what the bare loop needs
(torch, torchvision, mlabel_exp.data, mlabel_exp.models); anything more that train(cfg) imports
(MLflow, torchmetrics, matplotlib, ...) counts as its overhead. Both sides decode JPEGs every epoch in
default_workers(-1) workers (train(cfg) with data.decoded_cache=off: the cache's gain is bench_loader's
subject; ours sends uint8 and finishes batches with BatchTransform, the bare loop normalises floats in
its workers) and use smallcnn, AdamW, BCEWithLogits and batch size (the trainer's 32), on the same
train/val split, with a warm page cache. The bare loop gets the
index and split as inputs: building them counts against train(cfg). The MLflow store exists before
the timed runs (its one-time creation is reported apart). The variants run in alternation, 3 times
each (2 with tracking.log_model=false), and the best run is kept; one more, instrumented, run
(imports done beforehand) says where the time goes. Wall time is the figure; CPU time (main process +
DataLoader workers) is printed too. Another process may share the machine: each run waits (at most
20 s) for a quiet moment and reports the share of the cores other processes took while it ran. No
new round starts after 3 minutes.

    .venv/bin/python benchmarks/bench_overhead.py [--num-images 4000] [--epochs 1]

``--epochs 5`` measures five epochs per run instead of estimating them (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

ROUNDS = {"bare": 3, "ours": 3, "ours_nomodel": 2}
RESULT = "RESULT "
DEADLINE_S = 180.0  # no new round after this, so that the script stays under 5 minutes


# ---------------------------------------------------------------- children (one measurement each)

def overrides(args, tmp: Path, *extra: str) -> list[str]:
    # the decoded cache stays off and float32 on (no bfloat16 autocast, which the bare loop does not use either): both
    # sides decode every epoch in the same precision, so only the framework's own work differs
    return [f"data.cache_dir={_common.CACHE}", f"data.synthetic.num_images={args.num_images}",
            f"trainer.epochs={args.epochs}", "data.decoded_cache=off", "trainer.amp=false", "trainer.early_stopping_patience=0",
            f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", f"trainer.output_dir={tmp / 'out'}", *extra]


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_store(args, tmp: Path) -> dict:
    """Importing mlflow, then opening the store: a new one (schema creation) on the first call, else existing."""
    start = time.perf_counter()
    import mlflow  # noqa: F401

    imported = time.perf_counter()
    from mlabel_exp.tracking import runs as tracking

    tracking.Tracker(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", "mlabel-exp")
    return {"import_mlflow": imported - start, "open": time.perf_counter() - imported}


def child_bare(args, tmp: Path) -> dict:
    import torch
    from torch import nn

    from mlabel_exp.data.formats import index_from_config
    from mlabel_exp.data.images import build_transform
    from mlabel_exp.data.loaders import MultiLabelImages, default_workers, make_loader
    from mlabel_exp.data.split import make_split
    from mlabel_exp.models.zoo import build_model
    from tests.conftest import compose_cfg

    cfg = compose_cfg(*overrides(args, tmp))
    index = index_from_config(cfg.data)  # inputs, untimed: they count against train(cfg) only
    split = make_split(index.labels, cfg.data.val_fraction, seed=cfg.data.split_seed)
    size, batch = cfg.model.input_size, cfg.trainer.batch_size

    start, cpu = time.perf_counter(), cpu_s()
    torch.manual_seed(0)
    workers = default_workers(-1)
    train_ds = MultiLabelImages.from_index(index, split["train"], build_transform(size, train=True, hflip=True))
    val_ds = MultiLabelImages.from_index(index, split["val"], build_transform(size))
    train_loader = make_loader(train_ds, batch, shuffle=True, num_workers=workers, seed=0)
    val_loader = make_loader(val_ds, batch, shuffle=False, num_workers=workers)
    model = build_model("smallcnn", len(index.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.model.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    train_s = val_s = 0.0
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        for b in train_loader:
            loss = loss_fn(model(b["image"]), b["target"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        t1 = time.perf_counter()
        model.eval()
        val_loss = 0.0
        with torch.inference_mode():
            for b in val_loader:
                val_loss += float(loss_fn(model(b["image"]), b["target"])) * len(b["image"])
        train_s, val_s = train_s + t1 - t0, val_s + time.perf_counter() - t1
    end = time.perf_counter()
    return {"total": end - start, "cpu": cpu_s() - cpu, "train": train_s, "val": val_s,
            "val_loss": val_loss / len(val_ds), "train_images": len(train_ds), "val_images": len(val_ds)}


def child_ours(args, tmp: Path, *extra: str) -> dict:
    from mlabel_exp.experiment.train import train
    from tests.conftest import compose_cfg

    cfg = compose_cfg(*overrides(args, tmp, *extra))
    start, cpu = time.perf_counter(), cpu_s()
    train(cfg)
    return {"total": time.perf_counter() - start, "cpu": cpu_s() - cpu}


class Tree:
    """Inclusive wall time per call path of wrapped functions (a tiny tracing profiler)."""

    def __init__(self):
        self.stack: list[str] = []
        self.rec: dict[tuple[str, ...], list] = {}

    def wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def wrapper(*a, **k):
            self.stack.append(label)
            path = tuple(self.stack)
            rec = self.rec.setdefault(path, [0.0, 0])
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                rec[0] += time.perf_counter() - start
                rec[1] += 1
                self.stack.pop()

        setattr(owner, attr, wrapper)


def child_profiled(args, tmp: Path) -> dict:
    """train(cfg) with its heavy imports done beforehand (timed) and its steps timed."""
    imports = {}
    # what train(cfg) imports beyond the bare loop (iterstrat not: the split is remembered in the benchmark's cache)
    for mod in ("mlflow", "mlabel_exp.training.trainer", "mlabel_exp.tracking.runs", "mlabel_exp.metrics.scores", "mlabel_exp.render.figures",
                "mlabel_exp.experiment.record", "matplotlib.pyplot", "pandas", "mlflow.pyfunc"):
        start = time.perf_counter()
        __import__(mod)
        imports[mod] = time.perf_counter() - start

    from mlabel_exp.data import formats, split
    from mlabel_exp.training import checkpoints
    from mlabel_exp.training import trainer as engine
    from mlabel_exp.metrics import scores as metrics
    from mlabel_exp.models import zoo
    from mlabel_exp.diagnostics import figures as plots
    from mlabel_exp.inference import outputs
    from mlabel_exp.experiment import record
    from mlabel_exp.experiment import train as run
    from mlabel_exp.tracking import runs as tracking
    from tests.conftest import compose_cfg

    t = Tree()
    T = tracking.Tracker
    for owner, attr in [(tracking, "open_tracker"), (formats, "index_from_config"), (split, "split_from_config"),
                        (split, "save_split"), (zoo, "build_model"), (T, "start"), (record, "start"),
                        (engine.Trainer, "fit"), (engine.Trainer, "train_epoch"), (engine.Trainer, "predict"),
                        (metrics, "compute"), (checkpoints.Checkpoints, "save_best"),
                        (checkpoints.Checkpoints, "save_last"), (T, "log_metrics"),
                        (record, "log_results"), (plots, "curves"), (plots, "per_class_bars"), (plots, "pr_curves"),
                        (metrics, "tune_thresholds"), (metrics, "per_class_table"),
                        (outputs, "write_predictions"), (T, "log_artifact"), (T, "log_text"), (T, "log_model"),
                        (checkpoints, "save_atomic"), (record, "log_data_problems"), (T, "set_tags"), (T, "end")]:
        t.wrap(owner, attr, attr)
    cfg = compose_cfg(*overrides(args, tmp))
    start = time.perf_counter()
    run.train(cfg)
    total = time.perf_counter() - start
    tree = [[list(path), sec, n] for path, (sec, n) in t.rec.items()]
    return {"total": total, "imports": imports, "tree": tree}


# ---------------------------------------------------------------- parent

def measure(mode: str, args, tmp: Path) -> dict:
    """One child's result, plus the share of the cores other processes used while it ran."""
    _common.wait_for_quiet()
    cmd = [sys.executable, __file__, "--child", mode, "--num-images", str(args.num_images), "--epochs", str(args.epochs),
           "--tmp", str(tmp)]
    busy, own, start = _common.system_busy_s(), cpu_of_children(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_common.REPO)
    others = _common.others_share(_common.system_busy_s() - busy, cpu_of_children() - own, time.perf_counter() - start)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child {mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len(RESULT):]), "others": others}


def cpu_of_children() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def fmt_runs(rs: list[dict]) -> str:
    return ", ".join(f"{r['total']:.2f} s @ {r['others']:.0%}" for r in rs)


def print_tree(tree: list, total: float) -> None:
    top = sum(sec for path, sec, _ in tree if len(path) == 1)
    for path, sec, n in tree:
        calls = f" x{n}" if n > 1 else ""
        print(f"    {'  ' * (len(path) - 1)}{path[-1]}{calls}: {sec:.2f} s")
    print(f"    (rest of train(): config validation, optimizer, loaders, loss, tags: {total - top:.2f} s)")


def main() -> None:
    args = _common.child_process_args(__doc__, 4000)

    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # as the CLI logs: INFO, to a stream
        import torch  # noqa: F401  what both sides need, imported before any timing
        import torchvision  # noqa: F401

        import mlabel_exp.data.formats  # noqa: F401
        import mlabel_exp.data.loaders  # noqa: F401
        import mlabel_exp.data.split  # noqa: F401
        import mlabel_exp.models.zoo  # noqa: F401

        tmp = Path(args.tmp)
        fn = {"store": child_store, "bare": child_bare, "ours": child_ours, "profiled": child_profiled,
              "ours_nomodel": lambda a, t: child_ours(a, t, "tracking.log_model=false")}[args.child]
        print(RESULT + json.dumps(fn(args, tmp)), flush=True)
        return

    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    root = _common.dataset(args.num_images)
    _common.warm_page_cache(root)
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        tmp = Path(tmp)
        new_store = measure("store", args, tmp)
        old_store = measure("store", args, tmp)
        runs: dict[str, list[dict]] = {"bare": [], "ours": [], "ours_nomodel": []}
        started = time.perf_counter()
        for k in range(max(ROUNDS.values())):
            if k and time.perf_counter() - started > DEADLINE_S:
                print(f"(stopped after {k} rounds: {DEADLINE_S:.0f} s budget used; the machine is busy)")
                break
            for mode in runs:
                if k < ROUNDS[mode]:
                    runs[mode].append(measure(mode, args, tmp))
        profiled = measure("profiled", args, tmp)

    best = {mode: min(r["total"] for r in rs) for mode, rs in runs.items()}
    cpu = {mode: min(r["cpu"] for r in rs) for mode, rs in runs.items()}
    bare = min(runs["bare"], key=lambda r: r["total"])
    print(f"data: {args.num_images} synthetic images ({bare['train_images']} train / {bare['val_images']} val), "
          f"smallcnn at 64 px, batch 32, {args.epochs} epoch(s), both decoding every epoch; best of up to {ROUNDS['bare']} runs (wall and CPU minima taken "
          f"apart; 'runs' list wall time @ the share of the cores other processes used meanwhile)")
    print(f"bare loop: {best['bare']:.2f} s, CPU {cpu['bare']:.1f} s (train {bare['train']:.2f} s, validation "
          f"loss pass {bare['val']:.2f} s; runs {fmt_runs(runs['bare'])})")
    for mode, name in (("ours", "train(cfg)"), ("ours_nomodel", "train(cfg) tracking.log_model=false")):
        print(f"{name}: {best[mode]:.2f} s, CPU {cpu[mode]:.1f} s (runs {fmt_runs(runs[mode])}); "
              f"{best[mode] / best['bare']:.2f}x bare (+{best[mode] - best['bare']:.2f} s), "
              f"CPU {cpu[mode] / cpu['bare']:.2f}x")
    print(f"MLflow store, in a fresh process after import mlflow ({new_store['import_mlflow']:.2f} s): creating a new "
          f"SQLite store {new_store['open']:.2f} s once (not in the figures above; others' CPU share "
          f"{new_store['others']:.0%}), opening the existing one {old_store['open']:.2f} s (in every run)")
    print(f"where train(cfg)'s time goes (instrumented run, {profiled['total']:.2f} s, its imports done beforehand "
          f"and timed apart; its epoch time is as noisy as any single run):")
    print("  imports beyond the bare loop's, in this order (a module already pulled in by an earlier one shows ~0): " +
          ", ".join(f"{k} {v:.2f} s" for k, v in profiled["imports"].items()))
    print_tree(profiled["tree"], profiled["total"])
    secs = {tuple(path): sec for path, sec, _ in profiled["tree"]}
    in_fit = secs.get(("fit",), 0)
    loop = secs.get(("fit", "train_epoch"), 0) + secs.get(("fit", "predict"), 0)
    imports = sum(profiled["imports"].values())
    fixed = profiled["total"] - in_fit + imports
    per_epoch = (in_fit - loop) / args.epochs
    print(f"  the loops themselves: train_epoch + predict {loop:.2f} s in the instrumented run vs the bare loop's "
          f"{best['bare']:.2f} s (best run); the estimates below assume they match")
    print(f"  fixed cost per run: {fixed:.2f} s (imports {imports:.2f} s + everything outside fit "
          f"{profiled['total'] - in_fit:.2f} s); per epoch outside the training/validation loops (metrics, "
          f"checkpoints, logging): {per_epoch:.2f} s")
    bare_epoch = best["bare"] / args.epochs
    for epochs in (1, 20):
        est = (fixed + epochs * per_epoch) / (epochs * bare_epoch)
        print(f"  estimate for {epochs:>2} epoch(s) of this size: +{100 * est:.0f}% over the bare loop")
    ratio = best["ours"] / best["bare"]
    print(_common.quiet_line())
    print(f"target <= 1.10x: {'met' if ratio <= 1.10 else 'NOT met'}")
    print(f"ratio train(cfg)/bare: {ratio:.2f}x ({best['ours']:.2f} s vs {best['bare']:.2f} s, {args.epochs} epoch(s), "
          f"{args.num_images} images; {best['ours_nomodel'] / best['bare']:.2f}x with tracking.log_model=false; "
          f"CPU {cpu['ours'] / cpu['bare']:.2f}x)")

if __name__ == "__main__":
    main()
