"""One training run from a composed config, top to bottom: settle the settings (validated once), then build the data,
the model and the trainer, train, and record. ``train`` is what the run command, sweeps, the search and tests call;
it returns a ``RunOutcome`` and prints nothing (the commands do)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from mlabel_exp.config import Config, resolve_path, validate
from mlabel_exp.data.formats import index_from_config, resolve_data_root
from mlabel_exp.data.split import save_split, split_from_config, split_meta
from mlabel_exp.errors import ConfigError
from mlabel_exp.experiment import hydra_job as job
from mlabel_exp.experiment import record
from mlabel_exp.experiment.resume import check_classes, check_data, data_record, preempted_run, resume_point
from mlabel_exp.runtime import distributed
from mlabel_exp.tracking import runs as tracking
from mlabel_exp.training import optim
from mlabel_exp.training.callbacks import RunCallbacks
from mlabel_exp.training.ema import ema_decay
from mlabel_exp.training.output_folder import output_folder
from mlabel_exp.training.stop import StopRequest

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a finished run reports, for the command to print (plain data: a DDP run's rank 0 hands it back)."""
    objective: float                     # the best val mAP: what sweeps and the search maximise
    best_epoch: int
    epochs: int                          # epochs trained in all
    stopped_early: bool
    held_out: dict[str, dict[str, float]]  # test split and out-of-fold tuned figures
    out: Path
    run_name: str
    tags: dict[str, str]
    best_weights: str = "raw"            # raw, or ema: the averaged weights (trainer.ema) scored better and were kept
    run_id: str | None = None            # None where nothing was recorded (tracking.enabled=false)
    tracking_uri: str | None = None
    experiment_id: str | None = None


@dataclass
class Run:
    """What every step of one run shares: its settings in effect, and what the steps set up for the next."""
    cfg: DictConfig                      # as composed (and settled), what config.yaml and the checkpoints keep
    typed: Config                        # the same, validated
    resume: dict | None                  # the interrupted run's checkpoints and id (experiment.resume.resume_point)
    identity: tuple[str, dict[str, str]]  # run name and tags (hydra_job.run_identity)
    on_epoch: Callable | None = None     # sees each epoch's metrics (a search prunes with it)
    out: Path | None = None
    device: Any = None
    tracker: Any = None


def settle(cfg: DictConfig, group: dict | None = None, on_epoch=None) -> tuple[DictConfig, Config, dict | None]:
    """The settings in effect, validated once they are settled: what the user composed (checked first, before the
    store is opened), or the interrupted run's own (``resume=``, or this very job's run that its scheduler preempted),
    with a timm model's own input size, mean, std and interpolation where they are null."""
    from mlabel_exp.models.timm_backbones import with_data_config
    from mlabel_exp.runtime.precision import select_device

    typed = validate(cfg)
    select_device(typed.trainer.device)  # a device that is not there is one line, before any other work
    resume_from = typed.resume
    if not resume_from and on_epoch is None:  # a search continues its own trials
        resume_from = preempted_run(typed.tracking, job.run_identity(typed, group)[1])
        if resume_from:
            log.info("continuing run %s, which the scheduler preempted: the same command and job started it "
                     "(as resume=%s)", resume_from, resume_from)
    resume = None
    if resume_from:  # the overrides of a preempted job's own command line are the run's already
        cfg, resume = resume_point(cfg, job.task_overrides() if typed.resume else [], ref=resume_from,
                                   tracking=typed.tracking)
    cfg = with_data_config(cfg)
    return cfg, validate(cfg), resume


def train(cfg: DictConfig, *, on_epoch=None, group: dict[str, str] | None = None) -> RunOutcome:
    """Train one model as configured. ``on_epoch(epoch, metrics)`` sees every epoch's metrics; ``group`` adds tags,
    ``sweep_id`` among them, that make the run a child of that group's parent run."""
    cfg, typed, resume = settle(cfg, group, on_epoch)
    run = Run(cfg, typed, resume, job.run_identity(typed, group), on_epoch)
    if typed.trainer.devices > 1 and not distributed.launched_by_torchrun():
        if on_epoch is not None:
            raise ConfigError("trainer.devices > 1 cannot run inside a search; use trainer.devices=1")
        # N fresh processes on this machine; the Hydra context (output folder, run name, sweep tags) goes along
        pinned = OmegaConf.to_container(cfg, resolve=True)
        pinned["trainer"]["output_dir"] = str(job.output_dir(typed))
        return distributed.spawn(_train_process, typed.trainer.devices, pinned, run.identity, resume)
    return _train(run)


def _train_process(container: dict, identity, resume) -> RunOutcome:
    """One rank of a ``trainer.devices=N`` run (a spawned process: no Hydra context of its own)."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), container)
    if os.environ.get("RANK") == "0":  # rank 0 reports progress; the others stay quiet
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        return _train(Run(cfg, validate(cfg), resume, identity))
    finally:
        distributed.teardown()


def _train(run: Run) -> RunOutcome:
    """Checks that fail in seconds first, then the run in its output folder: data, model, trainer, fit, record."""
    _prepare(run)
    with output_folder(job.output_dir(run.typed)) as run.out:
        data = load_data(run)
        model, loaders, trainer, stop = build(run, data)
        with record.run_status(run.tracker, stop):
            result = trainer.fit(loaders.train, loaders.val, resume=run.resume and run.resume["last"],
                                 resume_best=run.resume and run.resume["best"])
            test = trainer.evaluate_best(loaders.test) if loaders.test is not None else None  # held out until now
            tta = {part: trainer.evaluate_best(loader, run.typed.trainer.tta) for part, loader in (
                ("val", loaders.val), ("test", loaders.test)) if loader is not None and run.typed.trainer.tta != "none"}
            held_out = record.log_results(run.tracker, run.typed, run.out, data.index.classes, result, test,
                                          data.index, tta) if distributed.is_main() else {}
        record.log_data_problems(run.tracker, run.out, data.index, trainer.bad_images)
        record.finish(run.tracker, result, held_out)
    t = run.tracker
    return RunOutcome(float(result.best_score), result.best_epoch, len(result.history), result.stopped_early, held_out,
                      run.out, run.identity[0], run.identity[1], result.best_weights, t.run_id, getattr(t, "uri", None),
                      getattr(t, "experiment_id", None))


def _prepare(run: Run) -> None:
    """Seeds, threads, what fails in seconds before any data is read (the input size, the data root, offline
    weights), the device and the tracker (an unwritable store fails here, before training; only rank 0 records)."""
    import numpy as np
    import torch

    from mlabel_exp.models.weights import fetch_weights
    from mlabel_exp.models.zoo import check_input_size
    from mlabel_exp.runtime.precision import select_device

    typed = run.typed
    torch.manual_seed(typed.seed)
    np.random.seed(typed.seed)
    if typed.trainer.num_threads:
        torch.set_num_threads(typed.trainer.num_threads)
    check_input_size(typed.model.key, typed.model.input_size, typed.model.aux_logits)
    if typed.data.name == "folder":  # a wrong data root fails before a download and before the store is opened
        resolve_data_root(typed.data)
    fetch_weights(typed.model.key, typed.model.weights)  # offline: fails here, in seconds
    run.device = select_device(typed.trainer.device)
    if distributed.launched_by_torchrun():
        run.device = distributed.setup(run.device.type)
    run.tracker = tracking.open_tracker(typed.tracking) if distributed.is_main() else tracking.NullTracker()


@dataclass
class RunData:
    index: Any                           # data.index.DatasetIndex
    split: dict                          # part -> row indices
    content: Any                         # each file's content hash (resume and the data digest compare them)
    record: dict                         # what last.pt keeps to check a resume's data (resume.data_record)


def load_data(run: Run) -> RunData:
    """The data set, its split (saved, or a resumed run's own) and the record a resume checks the data against."""
    from mlabel_exp.data import cache as image_cache
    from mlabel_exp.data.loaders import default_workers

    typed, resume, out = run.typed, run.resume, run.out
    if resume is None and (out / "checkpoints" / "last.pt").is_file():  # never overwrite another run's checkpoints
        raise ConfigError(f"{out} holds the checkpoints of an earlier run (checkpoints/last.pt), which a new run would "
                          "overwrite: continue that run with resume=<its run id> (its output_dir tag is this folder), "
                          "or give this run its own trainer.output_dir")
    index = index_from_config(typed.data)
    content = image_cache.content_hashes(index, resolve_path(typed.data.cache_dir), threads=default_workers(-1))
    data = data_record(index, content)
    if resume:  # the data it was trained on: the same images, classes, labels and pixels
        check_data(data, resume["last"].get("data"), resume["run_id"], index.root)
    split = split_from_config(index, typed.data, exact=resume is not None)
    if resume:
        check_classes(index.classes, resume["last"]["classes"])
    elif distributed.is_main():
        save_split(out / "split.json", index, split, **split_meta(typed.data))
    return RunData(index, split, content, data)


def build(run: Run, data: RunData):
    """The model on its device, the loaders, the run's start in the tracker and the Trainer; (model, loaders, trainer,
    stop request)."""
    import torch

    from mlabel_exp.data.loaders import build_loaders, check_validation_images
    from mlabel_exp.models.weights import weights_description
    from mlabel_exp.models.zoo import build_model
    from mlabel_exp.runtime.precision import memory_format, precision
    from mlabel_exp.training.trainer import epoch_steps

    typed, m, device, index, split = run.typed, run.typed.model, run.device, data.index, data.split
    net = build_model(m.key, len(index.classes), weights=m.weights, dropout=typed.dropout, hidden=m.hidden,
                      aux_logits=m.aux_logits, input_size=m.input_size)
    stop = StopRequest()
    callbacks = RunCallbacks(typed, net, run.tracker, stop, run.on_epoch)
    net.to(device, memory_format=memory_format(typed.trainer, device))  # before DDP takes its layout
    optimizer = optim.optimizer(typed, net, cuda=device.type == "cuda")
    model = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if distributed.active() else net
    loaders = build_loaders(typed, index, split, device.type == "cuda")
    check_validation_images(index, split, loaders.cache)
    weights = weights_description(m.key, m.weights)
    facts = record.run_facts(index, split, weights=weights, device=device, precision=precision(typed.trainer, device),
                             workers=loaders.workers, cache=loaders.cache,
                             ema_decay=ema_decay(typed.trainer.ema, epoch_steps(loaders.train, typed.trainer)))
    params = record.run_params(run.cfg, typed, facts, cuda=device.type == "cuda")
    record.start(run.tracker, run.cfg, run.identity, run.out, index, split, data.content, params,
                 {"weights": weights}, run.resume)
    log.info("training %s on %s (%s): %s, %d classes, %d trainable parameters; outputs in %s", m.name, device,
             facts["precision"], record.images_used(split, typed.trainer), len(index.classes), callbacks.trainable,
             run.out)
    trainer = _trainer(run, data, model, net, optimizer, callbacks, loaders, weights)
    return model, loaders, trainer, stop


def _trainer(run: Run, data: RunData, model, net, optimizer, callbacks, loaders, weights: str):
    """The Trainer of this run: its LR schedule, loss, checkpoints (rank 0 writes them) and what they record."""
    from mlabel_exp.inference.predictor import preprocessing_of
    from mlabel_exp.models import losses
    from mlabel_exp.training.trainer import Trainer, epoch_steps

    typed, index, split = run.typed, data.index, data.split
    m, t = typed.model, typed.trainer
    scheduler = optim.build_scheduler(t.scheduler, optimizer, t.epochs, epoch_steps(loaders.train, t))
    # unknown labels (-1) anywhere, validation included: masked out of the loss; none: the plain mean, as ever
    loss = losses.build_loss(typed.loss, index.labels[split["train"]], unknown=bool((index.labels < 0).any()))
    return Trainer(
        model, optimizer, t, device=run.device, classes=index.classes, aux_weight=m.aux_weight, scheduler=scheduler,
        loss_fn=loss.to(run.device), batch_transform=loaders.transform, callbacks=callbacks,
        checkpoint_dir=run.out / "checkpoints" if distributed.is_main() else None, net=net,
        metadata={"config": OmegaConf.to_container(run.cfg, resolve=True), "model_name": m.name,
                  "weights_used": weights,
                  "preprocessing": preprocessing_of(m, typed.data.decoded_cache_size if loaders.cache else None),
                  "data": data.record,
                  "hydra_choices": run.resume["choices"] if run.resume else job.group_choices()})
