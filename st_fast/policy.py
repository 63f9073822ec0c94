"""The staged policy: what Progressive Staged Training decides at each ACM check.

The training loop (st_fast.engine) measures ACM and owns the model; this object owns the
decision and its counters, so the same rules can drive any loop:

    policy.multipliers(L)       per-unit lr multipliers lambda(c) (ones unless policy "staged")
    policy.check(acm, ...)      record a reading; says whether to roll back
    policy.rolled_back(epoch)   after the loop restored its snapshot: c += 1 (staged) or the
                                stop reason (policy "stop", the ACM early-stopping controls)
    policy.exhausted(L)         no rollback left or every multiplier 0: step 1 cannot change

What a trigger means (``trigger``): absolute ACM > tau; relative ACM > tau x the first
reading; rise ACM - the last accepted reading > tau.
"""

from __future__ import annotations

from .errors import UserError
from .schedule import get_rule


def trigger_fires(kind: str, acm: float, tau: float, first: float | None, last_accepted: float | None) -> bool:
    """Does an ACM reading trigger? ``first``: ACM at the first check; ``last_accepted``: at the
    last accepted check (None before there is one)."""
    if kind == "absolute":
        return acm > tau
    if kind == "relative":
        return first is not None and acm > tau * first
    if kind == "rise":
        return last_accepted is not None and acm - last_accepted > tau
    raise UserError(f"unknown trigger {kind!r}")


class StagedPolicy:
    """The decisions of one run's step 1, from an :class:`~st_fast.config.STConfig`."""

    def __init__(self, st):
        self.st = st
        self.spec = st.spec
        self.rule = get_rule(st.multiplier_rule)
        self.c = 0                    # triggers acted on (the multipliers' counter)
        self.rollbacks = 0
        self.acm_first: float | None = None
        self.acm_last_accepted: float | None = None
        self.checks: list[dict] = []  # every reading: epoch, step, acm, triggered, accepted, c, ...

    @property
    def acts(self) -> bool:
        """Whether a trigger changes anything (policy "none" only logs ACM)."""
        return self.spec.policy != "none"

    def wants_acm(self) -> bool:
        return self.acts or self.st.log_acm

    def multipliers(self, num_units: int) -> list[float]:
        if self.spec.policy != "staged":
            return [1.0] * num_units
        return [float(v) for v in self.rule(self.c, num_units, self.st.alpha)]

    def check(self, acm: float, *, epoch: int, step: int, seconds: float = 0.0, impl: str = "-") -> dict:
        """Record one reading (at ``step`` of 1-based ``epoch``); ``result["rollback"]`` says
        whether the loop must restore its last accepted snapshot."""
        if self.acm_first is None:
            self.acm_first = acm
        fired = trigger_fires(self.st.trigger, acm, self.st.tau, self.acm_first, self.acm_last_accepted)
        rollback = fired and self.acts
        if not rollback:
            self.acm_last_accepted = acm
        check = {"epoch": epoch, "step": step, "acm": acm, "triggered": fired, "accepted": not rollback,
                 "c": self.c, "time_acm": seconds, "acm_impl": impl}
        self.checks.append(check)
        return {**check, "rollback": rollback}

    def rolled_back(self, epoch: int) -> str | None:
        """Count a rollback the loop has done; the stop reason when step 1 ends with it."""
        self.rollbacks += 1
        if self.spec.policy == "stop":
            return f"ACM trigger at epoch {epoch} (early stop)"
        self.c += 1
        return None

    def exhausted(self, num_units: int) -> bool:
        return self.end_reason(num_units) is not None

    def end_reason(self, num_units: int) -> str | None:
        """Why step 1 cannot go on, if it cannot (staged policy only)."""
        if self.spec.policy != "staged":
            return None
        if not any(self.multipliers(num_units)):
            return f"all multipliers reached 0 after {self.c} triggers"
        if self.rollbacks >= self.st.max_rollbacks:
            return f"rollback cap ({self.st.max_rollbacks}) reached"
        return None

    def accepted_step(self, epoch: int) -> int:
        """Batch index where the last accepted check left 1-based ``epoch`` (0: an earlier epoch)."""
        steps = [c["step"] for c in self.checks if c["accepted"] and c["epoch"] == epoch]
        return steps[-1] if steps else 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"c": self.c, "rollbacks": self.rollbacks, "acm_first": self.acm_first,
                "acm_last_accepted": self.acm_last_accepted, "checks": self.checks}

    def load_state_dict(self, sd: dict) -> None:
        self.c, self.rollbacks = sd["c"], sd["rollbacks"]
        self.acm_first, self.acm_last_accepted = sd["acm_first"], sd["acm_last_accepted"]
        self.checks = list(sd["checks"])
