"""Pretrained weights: torchvision names resolved to the torch hub cache (fetched before any data is read, offline
errors naming the file to place), state dicts on disk read and described for the run's log."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import torch
import torchvision

from mlabel_exp.errors import ModelError, WeightsUnavailable
from mlabel_exp.fsutil import file_lock
from mlabel_exp.models import timm_backbones
from mlabel_exp.models.backbones import backbone  # noqa: F401 - raised here

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_weights_file(weights: str) -> bool:
    return "/" in weights or os.sep in weights or weights.endswith(FILE_SUFFIXES) or os.path.isfile(weights)


def check_timm_weights(key: str, weights: str) -> str:
    """A timm model's weights name: DEFAULT (timm's pretrained tag in model.name, else its default tag)."""
    if weights != "DEFAULT":
        arch = timm_backbones.timm_name(key).split(".")[0]
        raise ModelError(f"model.weights={weights!r}: a timm model takes DEFAULT (timm's pretrained weights; name a tag "
                         f"in model.name, e.g. {arch}.<tag>), null (random init) or the path of a state dict")
    return timm_backbones.timm_name(key)


def weights_member(name: str, weights: str):
    """The torchvision weights enum member for a name such as DEFAULT, IMAGENET1K_V2 or ResNet50_Weights.DEFAULT."""
    b = backbone(name)
    if b.arch is None:
        raise ModelError(f"model.weights={weights!r}: {name} has no pretrained weights; "
                         "set model.weights=null (random init) or the path of a state dict")
    enum = torchvision.models.get_model_weights(b.arch)
    key = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    try:
        return enum[key]
    except KeyError:
        raise ModelError(f"model.weights={weights!r} is not a weights name for {name}: choose one of "
                         f"{', '.join(enum.__members__)}, null (random init) or the path of a state dict") from None


def weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"model.weights={weights!r}: no such file {path.resolve()}; "
                         "give the path of a saved state dict, a weights name such as DEFAULT, or null")
    return path


def _sha256_prefix(path: Path, length: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def weights_description(name: str, weights: str | None) -> str:
    """What ``weights`` resolves to, for the run's log: enum member, "random init" or file + sha256 prefix."""
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if weights is None:
        return "random init"
    if is_weights_file(weights):
        path = weights_file(weights)
        return f"state dict {path.resolve()} (sha256 {_sha256_prefix(path)})"
    if timm_backbones.is_timm(name):
        timm_name = check_timm_weights(name, weights)
        file = timm_backbones.fetch_pretrained(timm_name)
        return f"timm {timm_backbones.pretrained_source(timm_name)['tag']} {file} (sha256 {_sha256_prefix(file)})"
    return str(weights_member(name, weights))


def hub_file(member) -> Path:
    """Where torch hub keeps the weights ``member``: <TORCH_HOME>/hub/checkpoints/<the URL's file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)


def _unavailable(member, error: Exception) -> WeightsUnavailable:
    file = hub_file(member)
    state = (f"{file} exists but cannot be read; replace it with {member.url}" if file.exists() else
             f"download {member.url} on a machine with internet and place {file.name} in {file.parent}{os.sep}")
    return WeightsUnavailable(f"pretrained weights {member} are unavailable ({type(error).__name__}: {error}): {state}; "
                              "or train from random init with model.weights=null model.trainable=all")


def fetch_weights(name: str, weights: str | None, timeout: float = 15.0) -> None:
    """Checked before any data is read: a weights file exists, or the named pretrained weights are in the torch hub
    cache, downloaded now with torch hub's progress bar when absent. Offline, the error names the file and folder
    within seconds (every network wait is bounded by ``timeout``: a blocked network does not hang the run). One
    process downloads; others (a parallel sweep, DDP ranks) wait for its file."""
    import http.client
    import socket


    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if weights is None:
        return
    if is_weights_file(weights):
        weights_file(weights)
        return
    if timm_backbones.is_timm(name):
        timm_backbones.fetch_pretrained(check_timm_weights(name, weights))
        return
    member = weights_member(name, weights)
    file = hub_file(member)
    if file.is_file():
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(file.with_name(file.name + ".lock")):  # parallel jobs and DDP ranks: one download, the rest wait
        if file.is_file():
            return
        before = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)  # a stalled transfer fails too, not only an unreachable host
        try:
            digest = torch.hub.HASH_REGEX.search(file.name)
            log.info("downloading %s to %s", member.url, file)
            torch.hub.download_url_to_file(member.url, str(file), digest and digest.group(1), progress=True)
        except (OSError, RuntimeError, http.client.HTTPException) as e:  # offline, timeout, full disk, bad hash
            raise _unavailable(member, e) from e
        finally:
            socket.setdefaulttimeout(before)


def download_state_dict(member) -> dict[str, torch.Tensor]:
    """The enum's state dict from the torch hub cache, downloading it if absent."""
    try:
        # Torchvision's own call: the hash in the file name is checked on download only, not for a cached file.
        return member.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # URLError is an OSError
        raise _unavailable(member, e) from e


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: plain, or under a "model" / "state_dict" key; DataParallel's module. dropped."""
    try:
        if path.suffix == ".safetensors":  # the format of timm's Hugging Face files
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ModelError(f"model.weights={str(path)!r}: cannot read it as a PyTorch state dict "
                         f"({type(e).__name__}: {str(e)[:200]}); save one with torch.save(model.state_dict(), "
                         "path), not the whole model") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ModelError(f"model.weights={str(path)!r} holds no state dict (a dict of tensors, possibly under "
                         "a 'model' or 'state_dict' key); save one with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj
