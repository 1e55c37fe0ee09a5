"""Any timm model as a backbone (``model=timm model.name=<timm name>``): built by timm with our head size and dropout,
its data config (input size, mean, std, interpolation) as the run's preprocessing, its pretrained weights from timm's
own sources (Hugging Face hub cache, else the torch hub cache), and the freeze presets read from the model itself.

Architectures are named ``timm:<name>`` inside the package (config.model_key), so that timm's resnet50 and
torchvision's stay apart."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import os
from pathlib import Path

from torch import nn

from mlabel_exp.config import INTERPOLATIONS
from mlabel_exp.errors import ModelError, WeightsUnavailable

log = logging.getLogger(__name__)

PREFIX = "timm:"
EXTRA = "pip install mlabel-exp[timm]"


def is_timm(key: str) -> bool:
    return key.startswith(PREFIX)


def timm_name(key: str) -> str:
    return key[len(PREFIX):] if is_timm(key) else key


def import_timm():
    """timm, or the one-line error naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise ModelError(f"model=timm needs the timm package, which is not installed: {EXTRA} "
                         "(or pip install timm)") from None
    return timm


@functools.lru_cache(maxsize=None)
def check_name(name: str) -> None:
    """A timm architecture, with a pretrained tag (resnet50.a1_in1k) that timm knows if one is given; else the error
    with the closest names."""
    timm = import_timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        names = timm.list_models()
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        close += [n for n in fnmatch.filter(names, f"*{arch}*") if n not in close][:5 - len(close)]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(f"model.name={name!r} is not a timm model: {hint}(timm.list_models('{arch[:4]}*') lists "
                         "the names that start alike)")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise ModelError(f"model.name={name!r}: timm has no pretrained tag {tag!r} for {arch}; choose one of "
                             f"{', '.join(tags) or '(none: give the name without a tag)'}")


def _meta_model(name: str, num_classes: int = 2) -> nn.Module:
    """The architecture without memory or initialisation cost (meta tensors): for its data config and shapes."""
    import torch

    check_name(name)
    with torch.device("meta"):
        return import_timm().create_model(name, pretrained=False, num_classes=num_classes)


@functools.lru_cache(maxsize=None)
def data_config(name: str) -> dict:
    """timm's own data config for ``name`` (``timm.data.resolve_model_data_config``) in our terms: a square input
    size (the larger side of timm's), mean, std and an interpolation the batch resize can do."""
    import_timm()
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(_meta_model(name))
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        log.info("%s: timm's interpolation %r is not one the batch resize does: bicubic instead", name, interpolation)
        interpolation = "bicubic"
    return {"input_size": int(max(cfg["input_size"][1:])), "mean": [float(v) for v in cfg["mean"]],
            "std": [float(v) for v in cfg["std"]], "interpolation": interpolation,
            "crop_pct": float(cfg.get("crop_pct", 1.0))}


def with_data_config(cfg):
    """``cfg`` with the timm model's own input size, mean, std and interpolation where they are null: what the run
    records (params, config.yaml, checkpoints) and the Predictor replays. Other models' configs come back as given."""
    from omegaconf import OmegaConf

    m = cfg.model
    if m.get("source") != "timm":
        return cfg
    import_timm()  # first: without the extra, this is the error
    own = data_config(m.name)
    unset = {k: own[k] for k in ("input_size", "mean", "std", "interpolation") if m.get(k) is None}
    if not unset:
        return cfg
    log.info("%s: timm's data config %s (timm's centre crop of %.3f is not applied: a multi-label image keeps its "
             "edges)", m.name, unset, own["crop_pct"])
    return OmegaConf.merge(cfg, {"model": unset})


def check_input_size(name: str, input_size: int) -> None:
    """A shape-only forward pass (meta tensors, no arithmetic) at ``input_size``; the error names the model's own
    size. A model whose forward cannot run on meta tensors at its own size either is not checked here."""
    import torch

    model = _meta_model(name).eval()
    own = data_config(name)["input_size"]

    def fits(size: int) -> str | None:
        try:
            model(torch.empty(2, 3, size, size, device="meta"))
        except Exception as e:  # noqa: BLE001 - any failure: this size does not go through the model
            return f"{type(e).__name__}: {str(e).splitlines()[0][:160].rstrip('.') if str(e) else ''}"
        return None

    problem = fits(input_size)
    if problem and input_size != own and fits(own) is None:
        raise ModelError(f"model.input_size={input_size} does not fit timm model {name} ({problem}): set "
                         f"model.input_size={own} (its own) or null")


# ---------------------------------------------------------------- pretrained weights

def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it, read now (its module reads the variables once)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return Path(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")).expanduser()


def pretrained_source(name: str) -> dict:
    """Where timm takes ``name``'s pretrained weights from (its pretrained_cfg): the tag, the Hugging Face repo and
    the file names to look for in it, or the URL; and the file and folder a person places them in offline."""
    import torch
    from timm.models import get_pretrained_cfg

    check_name(name)
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ModelError(f"model.weights=DEFAULT: timm has no pretrained weights for {name}; use model.weights=null "
                         "(random init, with model.trainable=all) or the path of a state dict")
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        folder = hf_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots" / "main"
        return {"tag": tag, "repo": repo, "files": files, "place": folder / files[0],
                "url": f"https://huggingface.co/{repo}/resolve/main/{files[0]}"}
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
    return {"tag": tag, "repo": None, "files": [file.name], "place": file, "url": cfg.url}


def _cached(src: dict) -> Path | None:
    if src["repo"] is None:
        return src["place"] if src["place"].is_file() else None
    from huggingface_hub import try_to_load_from_cache

    for file in src["files"]:
        found = try_to_load_from_cache(src["repo"], file, cache_dir=hf_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _unavailable(src: dict, error: Exception) -> WeightsUnavailable:
    place, repo = src["place"], src["repo"]
    copy = (f" (or copy the models--{repo.replace('/', '--')} folder of an online machine's Hugging Face cache into "
            f"{hf_cache_dir()}{os.sep})") if repo else ""
    why = str(error).splitlines()[0][:160] if str(error) else ""
    return WeightsUnavailable(
        f"timm pretrained weights {src['tag']} are unavailable ({type(error).__name__}: {why}): download {src['url']} "
        f"on a machine with internet and place {place.name} in {place.parent}{os.sep}{copy}, or give the file as "
        "model.weights=<path>; or train from random init with model.weights=null model.trainable=all")


def fetch_pretrained(name: str) -> Path:
    """The cached file of ``name``'s pretrained weights, downloaded now where absent (HF hub: timm's files in the
    Hugging Face cache; otherwise timm's URL into the torch hub cache). Offline: the error names file and folder."""
    src = pretrained_source(name)
    found = _cached(src)
    if found is not None:
        return found
    if src["repo"] is None:
        return _download(src)
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    error: Exception | None = None
    for file in src["files"]:
        try:  # one bounded request first: hf_hub_download retries a refused connection for half a minute
            get_hf_file_metadata(hf_hub_url(src["repo"], file), timeout=10)
        except EntryNotFoundError as e:  # the repo has no such file (not LocalEntryNotFoundError: offline)
            if isinstance(e, LocalEntryNotFoundError):
                raise _unavailable(src, e) from e
            error = e
            continue
        except Exception as e:  # noqa: BLE001 - offline, refused, timed out, HF_HUB_OFFLINE
            raise _unavailable(src, e) from e
        log.info("downloading %s of %s into the Hugging Face cache %s", file, src["repo"], hf_cache_dir())
        try:
            return Path(hf_hub_download(src["repo"], file, cache_dir=hf_cache_dir()))
        except Exception as e:  # noqa: BLE001 - the connection lost, a full disk
            raise _unavailable(src, e) from e
    raise _unavailable(src, error)


def _download(src: dict) -> Path:
    """timm's URL into the torch hub cache (where timm's own download puts it), every network wait bounded."""
    import socket

    import torch

    place, before = src["place"], socket.getdefaulttimeout()
    place.parent.mkdir(parents=True, exist_ok=True)
    socket.setdefaulttimeout(15.0)
    try:
        log.info("downloading %s to %s", src["url"], place)
        torch.hub.download_url_to_file(src["url"], str(place), progress=True)
    except Exception as e:  # noqa: BLE001 - offline, timeout, full disk: the same advice
        raise _unavailable(src, e) from e
    finally:
        socket.setdefaulttimeout(before)
    return place


# ---------------------------------------------------------------- building

def create(name: str, num_classes: int, *, pretrained: bool, dropout: float) -> nn.Module:
    """timm's model with ``num_classes`` outputs and ``dropout`` before its classifier; with ``pretrained``, timm's
    weights loaded by timm itself (its checkpoint filter; its classifier left out) from the cached file."""
    timm = import_timm()
    check_name(name)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=dropout)
    cached = fetch_pretrained(name)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)},
                              num_classes=num_classes, drop_rate=dropout)
    log.info("%s: loaded timm's pretrained weights from %s (its classifier replaced by one of %d outputs)", name,
             cached, num_classes)
    return model


# ---------------------------------------------------------------- parameter groups

def classifier_names(model: nn.Module) -> list[str]:
    """Module names of the classifier(s) ``get_classifier()`` returns (a distilled model has two)."""
    found = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = found if isinstance(found, (tuple, list)) else [found]
    names = [n for n, m in model.named_modules() if n and any(m is h for h in heads if h is not None)]
    if not names:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        names = [c for c in ([cfg["classifier"]] if isinstance(cfg.get("classifier"), str) else
                             cfg.get("classifier") or []) if c in dict(model.named_modules())]
    if not names:
        raise ModelError(f"{type(model).__name__}: timm names no classifier (get_classifier), so the head cannot "
                         "train on its own: use model.trainable=all")
    return names


def _last_stages_start(model: nn.Module) -> str:
    """The first parameter of the second-to-last stage: the one after the third-to-last of timm's feature_info (each
    entry is the module that ends a stage: resnet's layer2, efficientnet's blocks.2), else of its coarse parameter
    groups (group_matcher)."""
    names = [n for n, _ in model.named_parameters()]
    info = getattr(model, "feature_info", None)
    modules = [f["module"] for f in info if f.get("module")] if isinstance(info, list) else []
    ends = [i for i, n in enumerate(names) if modules[-3:] and n.startswith(modules[-3] + ".")]
    if len(modules) >= 3 and ends and ends[-1] + 1 < len(names):
        return names[ends[-1] + 1]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        head = classifier_names(model)
        groups = [g for g in group_parameters(model, model.group_matcher(coarse=True)).values()
                  if not all(any(n.startswith(h + ".") for h in head) for n in g)]
        if len(groups) >= 2:
            return min(groups[-2], key=names.index)
    raise ModelError(f"model.trainable=partial: {type(model).__name__} describes no stages (feature_info, "
                     "group_matcher); give module-name patterns instead, e.g. model.trainable=['<last block>']")


def partial_modules(model: nn.Module) -> list[str]:
    """The last two stages and everything after them (final norms, the classifier): the fewest whole modules that
    hold exactly the parameters from the second-to-last stage on."""
    names = [n for n, _ in model.named_parameters()]
    chosen = set(names[names.index(_last_stages_start(model)):])
    out: list[str] = []
    for mname, module in model.named_modules():
        if not mname or any(mname.startswith(o + ".") for o in out):
            continue
        own = [f"{mname}.{p}" for p, _ in module.named_parameters()]
        if own and all(p in chosen for p in own):
            out.append(mname)
    return out
