"""The main job: ``python -m mlabel_exp.run [overrides]`` trains one model per Hydra job, tracked in MLflow.

``main`` is a thin Hydra wrapper around ``train(cfg)``, which tests, sweeps and the search call directly and
which returns the objective (best validation mAP). ``train`` only wires the parts together: settings become
objects in ``data`` (loaders), ``models`` and ``training.optim``, training runs in ``training.trainer``, and
``tracking.record`` records the run. Heavy imports (torch, mlflow) happen inside ``train`` so that ``--help`` and
``--cfg job`` stay fast.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

from mlabel_exp.training import distributed
from mlabel_exp.cli import hydra_job as job
from mlabel_exp.cli.app import command
from mlabel_exp.training.output_folder import output_folder
from mlabel_exp.training.stop import StopRequest
from mlabel_exp.config import Config, ConfigError, register, validate

log = logging.getLogger(__name__)


def train(cfg: DictConfig, *, on_epoch=None, group: dict[str, str] | None = None) -> float:
    """Train one model as configured; returns the best validation mAP (the sweep objective).

    ``on_epoch(epoch, metrics)`` sees every epoch's metrics (a search prunes with it); ``group`` adds tags,
    ``sweep_id`` among them, that make the run a child of that group's parent run.
    """
    from mlabel_exp.training.precision import select_device
    from mlabel_exp.training.resume import preempted_run, resume_point

    typed = validate(cfg)  # every setting checked before any data is read
    if typed.model.source == "timm":  # its own input size, mean, std, interpolation where null: recorded as in effect
        from mlabel_exp.models.timm_backbones import with_data_config

        cfg = with_data_config(cfg)
        typed = validate(cfg)
    select_device(typed.trainer.device)  # and the device: one that is not there is one line, before any other work
    overrides = job.task_overrides()
    if not typed.resume and on_epoch is None:  # a search continues its own trials
        found = preempted_run(typed.tracking, job.run_identity(typed, group)[1])
        if found:
            log.info("continuing run %s, which the scheduler preempted: the same command and job started it "
                     "(as resume=%s)", found, found)
            cfg, overrides = OmegaConf.merge(cfg, {"resume": found}), [f"resume={found}"]
            typed = validate(cfg)
    resume = None
    if typed.resume:  # the interrupted run's own config, checked again
        cfg, resume = resume_point(_resume_by_full_id(cfg, typed), overrides)
        typed = validate(cfg)
    if typed.trainer.devices > 1 and not distributed.launched_by_torchrun():
        if on_epoch is not None:
            raise ConfigError("trainer.devices > 1 cannot run inside a search; use trainer.devices=1")
        # N fresh processes on this machine; the Hydra context (output folder, run name, sweep tags) goes along
        pinned = OmegaConf.to_container(cfg, resolve=True)
        pinned["trainer"]["output_dir"] = str(job.output_dir(typed))
        return distributed.spawn(_train_process, typed.trainer.devices, pinned, job.run_identity(typed, group), resume)
    return _train(cfg, typed, resume, on_epoch, job.run_identity(typed, group))


def _resume_by_full_id(cfg: DictConfig, typed: Config) -> DictConfig:
    """resume=<a unique prefix of a run id>: the full id; latest keeps its meaning (the newest unfinished run)."""
    from mlabel_exp.tracking.run_ids import FULL_ID, resolve_run

    if typed.resume == "latest" or FULL_ID.fullmatch(typed.resume):
        return cfg
    full = resolve_run(typed.tracking.uri, typed.tracking.experiment, typed.resume, setting="resume")
    return OmegaConf.merge(cfg, {"resume": full})


def _train_process(container: dict, identity, resume) -> float:
    """One rank of a ``trainer.devices=N`` run (a spawned process: no Hydra context of its own)."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), container)
    if os.environ.get("RANK") == "0":  # rank 0 reports progress; the others stay quiet
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        return _train(cfg, validate(cfg), resume, None, identity)
    finally:
        distributed.teardown()


def _prepare(typed: Config):
    """Seeds, threads, the input-size check (before any data is read), the device and the tracker."""
    import numpy as np
    import torch

    from mlabel_exp.data.formats import resolve_data_root
    from mlabel_exp.models.weights import fetch_weights
    from mlabel_exp.models.zoo import check_input_size
    from mlabel_exp.tracking import runs as tracking
    from mlabel_exp.training.precision import select_device

    torch.manual_seed(typed.seed)
    np.random.seed(typed.seed)
    if typed.trainer.num_threads:
        torch.set_num_threads(typed.trainer.num_threads)
    check_input_size(typed.model.key, typed.model.input_size, typed.model.aux_logits)
    if typed.data.name == "folder":  # a wrong data root fails before a download and before the store is opened
        resolve_data_root(typed.data)
    fetch_weights(typed.model.key, typed.model.weights)  # offline: fails here, in seconds
    device = select_device(typed.trainer.device)
    if distributed.launched_by_torchrun():
        device = distributed.setup(device.type)
    # an unwritable store fails here, before training; only rank 0 records anything
    tracker = tracking.open_tracker(typed.tracking) if distributed.is_main() else tracking.NullTracker()
    return device, tracker


def _train(cfg: DictConfig, typed: Config, resume, on_epoch, identity) -> float:
    device, tracker = _prepare(typed)
    with output_folder(job.output_dir(typed)) as out:
        return _train_in(out, device, tracker, cfg, typed, resume, on_epoch, identity)


def _train_in(out, device, tracker, cfg: DictConfig, typed: Config, resume, on_epoch, identity) -> float:
    import torch

    from mlabel_exp.data.loaders import build_loaders, check_validation_images
    from mlabel_exp.models.weights import weights_description
    from mlabel_exp.models.zoo import build_model
    from mlabel_exp.tracking import record
    from mlabel_exp.training import optim
    from mlabel_exp.training.callbacks import RunCallbacks
    from mlabel_exp.training.ema import ema_decay
    from mlabel_exp.training.precision import memory_format, precision
    from mlabel_exp.training.trainer import epoch_steps

    m, main_rank = typed.model, distributed.is_main()
    index, split, content, data = _data(out, typed, resume, main_rank)
    net = build_model(m.key, len(index.classes), weights=m.weights, dropout=typed.dropout, hidden=m.hidden,
                      aux_logits=m.aux_logits, input_size=m.input_size)
    stop = StopRequest()
    callbacks = RunCallbacks(typed, net, tracker, stop, on_epoch)
    net.to(device, memory_format=memory_format(typed.trainer, device))  # before DDP takes its layout
    optimizer = optim.optimizer(typed, net, cuda=device.type == "cuda")
    model = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if distributed.active() else net
    loaders = build_loaders(typed, index, split, device.type == "cuda")
    check_validation_images(index, split, loaders.cache)
    weights = weights_description(m.key, m.weights)
    facts = record.run_facts(index, split, weights=weights, device=device, precision=precision(typed.trainer, device),
                             workers=loaders.workers, cache=loaders.cache, ema_decay=ema_decay(typed.trainer.ema, (
                                 epoch_steps(loaders.train, typed.trainer))))
    params = record.run_params(cfg, typed, facts, cuda=device.type == "cuda")
    record.start(tracker, cfg, identity, out, index, split, content, params, {"weights": weights}, resume)
    log.info("training %s on %s (%s): %s, %d classes, %d trainable parameters; outputs in %s", m.name, device,
             facts["precision"], record.images_used(split, typed.trainer), len(index.classes), callbacks.trainable, out)
    trainer = _trainer(model, net, optimizer, callbacks, loaders, index, split, device, out, cfg, typed, data, weights,
                       resume)
    with record.run_status(tracker, stop):
        result = trainer.fit(loaders.train, loaders.val, resume=resume and resume["last"],
                             resume_best=resume and resume["best"])
        test = trainer.evaluate_best(loaders.test) if loaders.test is not None else None  # held out until now
        tta = {part: trainer.evaluate_best(loader, typed.trainer.tta) for part, loader in (
            ("val", loaders.val), ("test", loaders.test)) if loader is not None and typed.trainer.tta != "none"}
        held_out = record.log_results(tracker, typed, out, index.classes, result, test, index, tta) if main_rank else {}
    record.log_data_problems(tracker, out, index, trainer.bad_images)
    record.finish(tracker, result, held_out)
    if main_rank:  # a sweep job or a search trial: one line (the console is quiet); a single run: the closing block
        warnings = job.quiet_warnings()
        print(record.closing_block(tracker, out, result, held_out) if warnings is None else
              job.finished_line(job.finished_label(identity[1]), identity[0], result, held_out, warnings), flush=True)
    return float(result.best_score)


def _data(out, typed: Config, resume, main_rank: bool):
    """The data set, its split (saved, or a resumed run's own) and the record a resume checks the data against."""
    from mlabel_exp.config import resolve_path
    from mlabel_exp.data import cache as image_cache
    from mlabel_exp.data.formats import index_from_config
    from mlabel_exp.data.loaders import default_workers
    from mlabel_exp.data.split import save_split, split_from_config
    from mlabel_exp.training.resume import check_classes, check_data, data_record

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
    elif main_rank:
        save_split(out / "split.json", index, split, seed=typed.data.split_seed)
    return index, split, content, data


def _trainer(model, net, optimizer, callbacks, loaders, index, split, device, out, cfg: DictConfig, typed: Config,
             data: dict, weights: str, resume):
    """The Trainer of this run: its LR schedule, loss, checkpoints (rank 0 writes them) and what they record."""
    from mlabel_exp.inference.predictor import preprocessing_of
    from mlabel_exp.models import losses
    from mlabel_exp.training import optim
    from mlabel_exp.training.trainer import Trainer, epoch_steps

    m, t = typed.model, typed.trainer
    scheduler = optim.build_scheduler(t.scheduler, optimizer, t.epochs, epoch_steps(loaders.train, t))
    # unknown labels (-1) anywhere, validation included: masked out of the loss; none: the plain mean, as ever
    loss = losses.build_loss(typed.loss, index.labels[split["train"]], unknown=bool((index.labels < 0).any()))
    return Trainer(
        model, optimizer, t, device=device, classes=index.classes, aux_weight=m.aux_weight, scheduler=scheduler,
        loss_fn=loss.to(device), batch_transform=loaders.transform,
        callbacks=callbacks, checkpoint_dir=out / "checkpoints" if distributed.is_main() else None, net=net,
        metadata={"config": OmegaConf.to_container(cfg, resolve=True), "model_name": m.name, "weights_used": weights,
                  "preprocessing": preprocessing_of(m, typed.data.decoded_cache_size if loaders.cache else None),
                  "data": data, "hydra_choices": resume["choices"] if resume else job.group_choices()})


def _job(cfg: DictConfig) -> float:
    """One Hydra job. In a sweep a failing job is recorded and the sweep goes on (see hydra_job.SweepSummary)."""
    from contextlib import nullcontext

    try:
        with job.quiet_console() if job.sweep_dir() is not None else nullcontext():  # one line a job; its log: all
            return train(cfg)
    except Exception as e:
        if job.sweep_dir() is None:
            raise
        job.record_failed_job(e)
        return float("nan")


register()
main = command(_job, "config")

if __name__ == "__main__":
    main()
