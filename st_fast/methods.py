"""The training methods by name: what step 1 augments, what a trigger does, whether step 2 runs.

    policy "none"   (nt, nt-cg, nt-cg-ft)      nothing; ACM is only logged
    policy "staged" (st, st-cg, st-full)       roll back, c += 1, recompute the multipliers
    policy "stop"   (acm-es, acm-es-ft,        roll back to the last accepted check and end step 1
                     acm-es-cg-ft)

A registry with no imports of the engine, so configs and defences can name methods.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    cg: bool          # CG augmentation in step 1
    policy: str       # "none" | "staged" | "stop"
    finetune: bool    # step 2: CG fine-tune of all units


METHODS: dict[str, MethodSpec] = {
    "nt": MethodSpec(False, "none", False),
    "nt-cg": MethodSpec(True, "none", False),
    "st": MethodSpec(False, "staged", False),
    "st-cg": MethodSpec(True, "staged", False),
    "st-full": MethodSpec(True, "staged", True),
    "nt-cg-ft": MethodSpec(True, "none", True),
    "acm-es": MethodSpec(False, "stop", False),
    "acm-es-ft": MethodSpec(False, "stop", True),
    # ST-Full with the multipliers replaced by stopping: isolates what the staged lrs add
    "acm-es-cg-ft": MethodSpec(True, "stop", True),
}

TRIGGERS = ("absolute", "relative", "rise")
ROLLBACKS = ("consume", "retry")
