"""Weights and optimizer state in safetensors (never pickle); JSON and atomic files are in pipeline.store.files."""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_weights(module: torch.nn.Module, path: str) -> None:
    """The module's state dict as safetensors (contiguous CPU copies)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path)


def load_weights(module: torch.nn.Module, path: str, strict: bool = True) -> None:
    module.load_state_dict(load_file(path), strict=strict)


def save_optimizer(opt: torch.optim.Optimizer, folder: str) -> None:
    """Optimizer state: tensors to optimizer.safetensors, everything else to optimizer.json."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, os.path.join(folder, "optimizer.safetensors"))
    with open(os.path.join(folder, "optimizer.json"), "w") as fh:
        json.dump({"param_groups": state["param_groups"], "scalars": scalars}, fh)


def load_optimizer(opt: torch.optim.Optimizer, folder: str) -> None:
    tensors = load_file(os.path.join(folder, "optimizer.safetensors"))
    with open(os.path.join(folder, "optimizer.json")) as fh:
        meta = json.load(fh)
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
