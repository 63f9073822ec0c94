"""CGParams: the per-image parameters of one CG batch, shared by every backend (and DALI's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from st_fast.kernels.color_gray import HUE, NOOP, SATURATION


@dataclass
class CGParams:
    """Per-image parameters of one batch; the same object drives every backend."""

    factors: torch.Tensor  # float32 (N, 4): brightness, contrast, saturation, hue
    order: torch.Tensor  # int32 (N, 4): op ids in application order, NOOP where not applied
    gray: torch.Tensor  # bool (N,)
    jitter: torch.Tensor  # bool (N,): the jitter coin (order is all NOOP where False)

    def __len__(self) -> int:
        return self.factors.shape[0]

    def for_channels(self, channels: int) -> CGParams:
        """One-channel images: saturation, hue and grayscale are no-ops (as in torchvision)."""
        if channels == 3:
            return self
        order = self.order.clone()
        order[(order == SATURATION) | (order == HUE)] = NOOP
        return CGParams(self.factors, order, torch.zeros_like(self.gray), self.jitter)
