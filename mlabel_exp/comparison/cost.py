"""What a model costs beside what it scores: parameters (trainable and total), checkpoint size, and inference speed
measured on this machine through the run's own Predictor (its preprocessing, autocast precision, memory layout and,
where this machine has it, its device), on a batch of its validation images after a warm-up. Choosing between
resnet50, vgg16 and inception is a trade-off; this is the other axis of it.

Cheap by design (a few batches, about 2 s a model at most): ``images_per_s`` is a ranking on this machine, not a
benchmark (docs/performance.md has those)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlabel_exp.config import Config
from mlabel_exp.errors import UserError
from mlabel_exp.tracking import query

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["group", "run_id", "model", "trainable_params", "total_params", "checkpoint_bytes", "device", "precision",
           "batch_size", "images_per_s", "ms_per_image", "inputs"]
TIME_BUDGET_S = 1.5   # timed batches stop once this much time has passed (after at least one)
MAX_BATCHES = 20
MAX_BATCH = {"cpu": 8, "other": 32}  # images in the timed batch at most (the run's batch size when smaller)


def checkpoint_of(uri: str, run: dict, tmp: Path) -> Path:
    """The run's best.pt: in its output folder where that is still on this disk, else from the store."""
    local = Path(run["tags"].get("output_dir", "")) / "checkpoints" / "best.pt"
    if run["tags"].get("output_dir") and local.is_file():
        return local
    return query.download_best_checkpoint(uri, run["run_id"], tmp / run["run_id"])[0]


def run_config(ckpt: dict):
    """The run's typed config, from the copy its checkpoint holds."""
    from omegaconf import OmegaConf


    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"]))


def parameter_counts(ckpt: dict, model) -> tuple[int, int]:
    """(trainable, total) parameters of ``model`` with the run's model.trainable preset applied (its final one)."""
    from mlabel_exp.models.freeze import set_trainable

    m = ckpt["config"]["model"]
    total = sum(p.numel() for p in model.parameters())
    trainable = set_trainable(model, m["name"], m.get("trainable", "all"))
    return int(trainable), int(total)


def validation_batch(ckpt: dict, predictor, run_dir: Path | None, n: int):
    """Up to ``n`` of the run's validation images, decoded as the Predictor decodes them (uint8 batch), and what they
    are; random pixels of the decode size where the data set or its split cannot be found here (said so)."""
    import torch

    from mlabel_exp.data.formats import index_from_config
    from mlabel_exp.data.images import load_image
    from mlabel_exp.data.split import load_split

    data_log = logging.getLogger("mlabel_exp.data")  # the run said its data's findings already
    level = data_log.level
    data_log.setLevel(logging.ERROR)
    try:
        index = index_from_config(run_config(ckpt).data)
        split = load_split(run_dir / "split.json", index) if run_dir else {}
        rows = split.get("val", [])[:n]
        if len(rows):
            images = [predictor.image_steps(load_image(p)) for p in index.paths(rows)]
            return torch.stack(images), f"{len(rows)} validation images"
        why = "no split.json in its output folder"
    except (UserError, OSError) as e:
        why = str(e).splitlines()[0][:120]
    finally:
        data_log.setLevel(level)
    size = predictor.preprocessing["decode_size"]
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return batch, f"random {size} px images ({why})"


def images_per_second(predictor, batch) -> float:
    """Batches of ``batch`` through Predictor.probabilities after one warm-up batch, for about TIME_BUDGET_S."""
    import torch

    def sync():
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)

    predictor.probabilities(batch)  # warm-up: first-call allocations, autotuning, lazy initialisation
    sync()
    start, count = time.perf_counter(), 0
    while count < MAX_BATCHES:
        predictor.probabilities(batch)
        sync()
        count += 1
        if time.perf_counter() - start >= TIME_BUDGET_S:
            break
    return count * len(batch) / (time.perf_counter() - start)


def device_here(run: dict):
    """The run's device where this machine has one of its kind, else the CPU."""
    import torch

    from mlabel_exp.runtime.precision import select_device

    try:
        return select_device(run["params"].get("device", "cpu").split(":")[0], "device")
    except UserError:
        return torch.device("cpu")


def measure(uri: str, group: str, run: dict, tmp: Path) -> dict:
    """One row of COLUMNS for ``run`` (the best run of ``group``)."""
    import torch

    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.training.checkpoints import load_checkpoint

    path = checkpoint_of(uri, run, tmp)
    ckpt = load_checkpoint(path)
    predictor = Predictor.from_checkpoint(ckpt, device_here(run))
    trainable, total = parameter_counts(ckpt, predictor.model)
    most = MAX_BATCH["cpu" if predictor.device.type == "cpu" else "other"]
    batch_size = min(int(ckpt["config"].get("trainer", {}).get("batch_size", most)), most)
    output_dir = run["tags"].get("output_dir")
    batch, inputs = validation_batch(ckpt, predictor, Path(output_dir) if output_dir else None, batch_size)
    with torch.inference_mode():
        speed = images_per_second(predictor, batch)
    precision = "float32" if not predictor.autocast else f"{str(predictor.amp_dtype).removeprefix('torch.')} autocast"
    return {"group": group, "run_id": run["run_id"], "model": ckpt["config"]["model"]["name"],
            "trainable_params": trainable, "total_params": total, "checkpoint_bytes": path.stat().st_size,
            "device": str(predictor.device), "precision": precision, "batch_size": len(batch),
            "images_per_s": speed, "ms_per_image": 1000.0 / speed, "inputs": inputs}


def cost_table(uri: str, best_runs: dict[str, dict]) -> tuple[pd.DataFrame, list[str]]:
    """COLUMNS for each group's best run (``best_runs``: group -> run); a run without a checkpoint is left out and
    named in the notes."""
    import tempfile

    import pandas as pd

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for group, run in best_runs.items():
            try:
                rows.append(measure(uri, group, run, Path(tmp)))
            except UserError as e:
                notes.append(f"cost: left out {group} (run {run['run_id'][:8]}): {str(e).splitlines()[0][:160]}")
    return pd.DataFrame(rows, columns=COLUMNS), notes
