"""One modality trained alone: the reference that shows what joint training costs the weaker modality.

`audio-only` / `video-only` train that modality's encoder and unimodal head with the head's
cross-entropy only. The other encoders get no gradient at all; their heads are trained as probes on
detached features. The fused head is not trained: its accuracy is meaningless for these runs, so a
trainer selects the checkpoint on this modality's head (`selection_head`) and reports that head.
"""

from __future__ import annotations

import torch.nn.functional as F

from mlb.balancing.base import Balancer, probe_loss, unwrap


class _Alone(Balancer):
    modality = ""
    uses_unimodal_heads = True

    @property
    def selection_head(self) -> str:
        return self.modality

    @classmethod
    def check_model(cls, model) -> None:
        super().check_model(model)
        if cls.modality not in unwrap(model).modalities:
            raise ValueError(
                f"method {cls.name!r} needs modality {cls.modality!r}; the model has "
                f"{unwrap(model).modalities}"
            )

    def loss(self, model, batch, out):
        label = batch["label"]
        own = F.cross_entropy(out.unimodal[self.modality], label)
        probes = {m: v for m, v in probe_loss(model, out, label).items() if m != self.modality}
        total = own + sum(probes.values())
        return total, self.log_values(
            {"loss": own, f"loss_{self.modality}": own, **{f"loss_{m}": v for m, v in probes.items()}}
        )


class AudioOnly(_Alone):
    """The audio encoder and its head trained alone (audio head's cross-entropy only)."""

    name = "audio-only"
    modality = "audio"


class VideoOnly(_Alone):
    """The video encoder and its head trained alone (video head's cross-entropy only)."""

    name = "video-only"
    modality = "video"
