"""Early stopping on clean validation images: ``val-es`` (NT) and ``cg-val-es`` (NT-CG).

ST's own paper grants the defender 20 clean images (to tune tau and alpha); the obvious
baseline with the same grant, which nobody reports, is to keep the epoch whose model is best
on those images ("Poisons that are learned faster are more effective", Sandoval-Segura et al.
2022, recommends reporting early stopping). The engine evaluates the held-out clean
validation images after every epoch and ends with the weights of the best one (ties: the
earliest epoch). The test set is never looked at for the choice.
"""

from __future__ import annotations

from .base import Defence, register

register(Defence(
    name="val-es",
    summary="NT, keeping the epoch with the best accuracy on the clean validation images (ties: earliest)",
    method="nt",
    select_on_val=True,
))
register(Defence(
    name="cg-val-es",
    summary="NT-CG, keeping the epoch with the best accuracy on the clean validation images (ties: earliest)",
    method="nt-cg",
    select_on_val=True,
))
