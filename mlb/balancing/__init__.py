"""Balancing methods behind one interface (`Balancer`, docs/CONTRACTS.md "Balancing methods").

    from mlb.balancing import MLB
    balancer = MLB(alpha=0.5, beta_max=10.0)
    ...
    out = model(batch)
    loss, logs = balancer.loss(model, batch, out)
    optimizer.zero_grad(); loss.backward()
    logs |= balancer.before_step(model, batch, out)   # scales each modality's gradients by k_i
    optimizer.step()

`METHODS` maps every `--method` name to its class; `build_balancer(name, **params)` builds one.
Baselines live in their own modules (`mlb/balancing/<name>.py`); every `Balancer` subclass defined in
a module listed in `BASELINE_MODULES` is registered under its `name` (a listed module that is missing, or
that defines none, fails the import).
"""

from __future__ import annotations

import importlib

from mlb.balancing.base import (
    Balancer,
    floats_for_log,
    probe_loss,
    true_class_scores,
    unimodal_losses,
    unwrap,
)
from mlb.balancing.grads import scale_grads, scale_modality_grads
from mlb.balancing.joint import Joint
from mlb.balancing.mlb import MLB, mlb_coefficients, performance_ratios
from mlb.balancing.multi_loss import MultiLoss

METHODS: dict[str, type[Balancer]] = {cls.name: cls for cls in (Joint, MultiLoss, MLB)}

# ---- baselines: register here (module names under mlb/balancing/) ----------------------------------
BASELINE_MODULES = (
    "ogm_ge",
    "mslr",
    "agm",
    "pmr",
    "mmcosine",
    "unimodal",
    "mla",
    "gblending",
    "dgl",
    "mmpareto",
    "reconboost",
    "unipre",
    "mcr",
    "diagnosing_relearning",
)


def _register_module(module_name: str) -> None:
    """Register every `Balancer` subclass that `mlb/balancing/<module_name>.py` defines; a missing module,
    or one that defines no balancer, is an error (a misspelt entry must not drop a method silently)."""
    module = importlib.import_module(f"{__name__}.{module_name}")
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Balancer)
        and obj.__module__ == module.__name__
        and obj.name != Balancer.name
    ]
    if not found:
        raise ImportError(f"{module.__file__} defines no Balancer subclass with a name: nothing to register")
    for obj in found:
        if obj.name in METHODS and METHODS[obj.name] is not obj:
            raise ValueError(f"two balancers named {obj.name!r}: {METHODS[obj.name]} and {obj}")
        METHODS[obj.name] = obj


for _name in BASELINE_MODULES:
    _register_module(_name)


def build_balancer(name: str, **params) -> Balancer:
    """The balancer registered as `name`, built with keyword hyper-parameters."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise ValueError(f"method {name!r}: bad parameters {params!r} ({err})") from err


__all__ = [
    "METHODS",
    "MLB",
    "Balancer",
    "Joint",
    "MultiLoss",
    "build_balancer",
    "floats_for_log",
    "mlb_coefficients",
    "performance_ratios",
    "probe_loss",
    "scale_grads",
    "scale_modality_grads",
    "true_class_scores",
    "unimodal_losses",
    "unwrap",
]
