"""MSLR: Modality-Specific Learning Rates (Yao & Mihalcea, Findings of ACL 2022), adaptive variant.

Once per epoch, after validation, from each modality's validation accuracy acc_m:
    ratio_m = acc_m(now) / mean(acc_m over the K epochs before now)   (1 until K earlier epochs exist)
    coeff_m = init_m · ratio_m
and every training step multiplies the gradients of modality m's branch by coeff_m, which is the same
as giving that branch its own learning rate init_m · ratio_m · lr for plain SGD. Caveat: Adam's
update is invariant to a constant gradient scale (m / √v), so under Adam a coefficient that stays
fixed for a whole epoch acts mainly through ε, weight decay, and the transient after each per-epoch
change; we implement the gradient scaling the method card asks for and report this rather than hide
it. The loss is the fused cross-entropy only.

Where acc_m comes from: `val_metrics[acc_key.format(modality=m)]`, by default `acc_audio` /
`acc_video`, which the trainer computes from the unimodal heads. Under this method those heads are
trained as *detached probes* (`base.probe_loss`): a linear read-out of each encoder's features that
sends no gradient back, so acc_m measures how good encoder m is on its own. (The authors of MSLR, with
additive late fusion, read each modality's own classifier; with Late-Linear the halves
`fused_parts` are that classifier. We use the probes because they exist for every fusion head.)
Until the first validation, and whenever acc_m is missing, coeff_m = init_m.

Which parameters coeff_m scales (`fusion_slices`):
- False (default): modality m's encoder only, as the MLB repository's MSLR (kkontras/MLB
  `Bias_Infusion_MSLR`, parameter names "enc_0" / "mod0"), the version behind the MLB paper's table.
  One difference: on the Gated head that name rule also catches the per-modality gate / value layers,
  which are not scaled here.
- True: the encoder plus its slice of the fusion layer (`grads.branch_grad_slices`, the "input" rule),
  as the AGM repository's MSLR (Lingy12/AGM_ICCV2023 `run/CREMAD_main.py`, 'audio_net' and 'audio_cls',
  the modality's half of the additive classifier).
The unimodal probe heads are never scaled (their learning rate is left alone).

Logs: `k_<m>` and `r_<m>` every step; `mslr_ratio_<m>` from `on_epoch_end`.

Authors' settings as the MLB authors ran them: init audio 0.7, video 1.3 (any other modality 1.0),
K = 20. Keyword arguments override them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mlb.balancing.base import Balancer, fused_loss_with_probes
from mlb.balancing.grads import branch_grad_slices, encoder_grad_slices, scale_grad_slices
from mlb.common.search_space import IntRange, SearchSpace

DEFAULT_INIT = {"audio": 0.7, "video": 1.3}


# ---- pure math ---------------------------------------------------------------------------------------
def mslr_ratio(history: list[float], now: float, window: int) -> float:
    """acc(now) / mean of the last `window` entries of `history` (the epochs before now); 1.0 while
    fewer than `window` earlier epochs exist or when that mean is 0."""
    if window < 1:
        raise ValueError(f"mslr window must be >= 1, got {window!r}")
    if len(history) < window:
        return 1.0
    past = sum(history[-window:]) / window
    return float(now) / past if past > 0 else 1.0


# ---- the method --------------------------------------------------------------------------------------
class MSLR(Balancer):
    """Adaptive modality-specific learning rates from validation accuracy.

    Keyword arguments (MLB authors' settings):
    init: per-modality initial coefficient, default `{"audio": 0.7, "video": 1.3}` (others 1.0).
    window: K, the number of earlier epochs averaged (20).
    acc_key: the `val_metrics` key of modality m's accuracy, a format string with `{modality}`.
    fusion_slices: False scales the encoders only (MLB repository); True also each modality's slice
        of the fusion layer (AGM repository). See the module docstring.
    """

    name: ClassVar[str] = "mslr"
    search_space: ClassVar[SearchSpace] = {"window": IntRange(2, 20)}
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(
        self,
        *,
        init: dict[str, float] | None = None,
        window: int = 20,
        acc_key: str = "acc_{modality}",
        fusion_slices: bool = False,
    ):
        init = dict(DEFAULT_INIT if init is None else init)
        for m, value in init.items():
            if not value > 0:
                raise ValueError(f"mslr init[{m!r}] must be > 0, got {value!r}")
        if window < 1:
            raise ValueError(f"mslr window must be >= 1, got {window!r}")
        if "{modality}" not in acc_key:
            raise ValueError(f"mslr acc_key must contain '{{modality}}', got {acc_key!r}")
        self.init = init
        self.window = int(window)
        self.acc_key = acc_key
        if fusion_slices not in (True, False):
            raise ValueError(f"mslr fusion_slices must be true or false, got {fusion_slices!r}")
        self.fusion_slices = fusion_slices
        self.history: dict[str, list[float]] = {}  # modality -> validation accuracy per epoch
        self.ratio: dict[str, float] = {}  # modality -> latest ratio (1.0 until known)
        self.modalities: tuple[str, ...] = ()  # the model's, learnt at the first step

    def coefficient(self, m: str) -> float:
        return self.init.get(m, 1.0) * self.ratio.get(m, 1.0)

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        self.modalities = tuple(model.modalities)
        total, terms = fused_loss_with_probes(model, out, batch["label"])
        return total, self.log_values(terms)

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        logs = {}
        for m in model.modalities:
            k = self.coefficient(m)
            slices = branch_grad_slices(model, m) if self.fusion_slices else encoder_grad_slices(model, m)
            scale_grad_slices(slices, k)
            logs[f"k_{m}"] = k
            logs[f"r_{m}"] = self.ratio.get(m, 1.0)
        return logs

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        logs = {}
        for m in self.modalities or tuple(self.init):
            key = self.acc_key.format(modality=m)
            if key not in val_metrics:
                continue
            now = float(val_metrics[key])
            past = self.history.setdefault(m, [])
            self.ratio[m] = mslr_ratio(past, now, self.window)  # against the epochs before now
            past.append(now)
            logs[f"mslr_ratio_{m}"] = self.ratio[m]
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"history": {m: list(h) for m, h in self.history.items()}, "ratio": dict(self.ratio)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {m: [float(x) for x in h] for m, h in state["history"].items()}
        self.ratio = {m: float(r) for m, r in state["ratio"].items()}
