"""PyTorch Lightning callbacks: ST (``STCallback``) and ACM logging (``ACMCallback``).

    trainer = lightning.Trainer(max_epochs=30, callbacks=[
        STCallback(probe=(images, labels), tau=3.5, alpha=0.25),   # ST on Lightning's optimizer
        ACMCallback(probe=(images, labels), log_to="runs/acm"),    # or only watch ACM
    ])

``STCallback`` wraps :class:`st_fast.STController` around the optimizer and schedulers that
``configure_optimizers`` returned (the controller splits param groups per unit and the
schedulers' per-group lists with them; build one group per unit with
``st_fast.controller.unit_param_groups(model)`` so that nothing needs splitting, which is also
what resuming from a Lightning checkpoint needs). At the end of every training epoch it
checks, rolls back on a trigger, logs ``st/acm``, ``st/c`` and ``st/rolled_back`` through the
trainer's logger and sets ``trainer.should_stop`` when step 1 cannot go on. Only
``rollback="consume"``: Lightning owns the epoch loop, so a rejected epoch cannot be re-run.
Its state (the controller's, with the accepted snapshot) is saved in Lightning checkpoints.

This module imports without Lightning; the callbacks then say, in one line, how to install it.
"""

from __future__ import annotations

from ..errors import UserError

try:
    from lightning.pytorch import Callback
    MISSING = None
except ImportError:
    try:
        from pytorch_lightning import Callback
        MISSING = None
    except ImportError:
        Callback = object
        MISSING = ("the Lightning callbacks need PyTorch Lightning, which is not installed: "
                   "pip install 'st_fast[lightning]' (or pip install lightning)")


def _require_lightning() -> None:
    if MISSING is not None:
        raise UserError(MISSING)


class STCallback(Callback):
    """Progressive Staged Training on a LightningModule; keyword arguments go to STController."""

    def __init__(self, probe, tau: float = 3.5, alpha: float = 0.25, units=None, **options):
        _require_lightning()
        if options.get("rollback", "consume") != "consume":
            raise UserError("STCallback supports rollback='consume' only: Lightning runs the epochs, "
                            "so a rejected epoch cannot be re-run")
        self.probe, self.tau, self.alpha, self.units, self.options = probe, tau, alpha, units, options
        self.controller = None
        self.last_report = None
        self._pending_state: dict | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from ..controller import STController

        if len(trainer.optimizers) != 1:
            raise UserError(f"STCallback needs exactly one optimizer, configure_optimizers gave "
                            f"{len(trainer.optimizers)}")
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        self.controller = STController(pl_module, trainer.optimizers[0], units=self.units,
                                       probe=self.probe, tau=self.tau, alpha=self.alpha,
                                       schedulers=schedulers, **self.options)
        if self._pending_state is not None:
            self.controller.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        report = self.controller.end_epoch()
        self.last_report = report
        pl_module.log_dict({"st/acm": report.acm, "st/c": float(report.c),
                            "st/rolled_back": float(report.rolled_back)}, on_epoch=True)
        if report.stop:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.controller is not None:
            self.controller.close()

    def state_dict(self) -> dict:
        return self.controller.state_dict() if self.controller is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._pending_state = state_dict


class ACMCallback(Callback):
    """ACM of the LightningModule on ``probe`` every ``every`` training epochs, logged as ``acm``
    (and ``acm_std`` with repeats) through the trainer's logger; keyword arguments go to
    :class:`st_fast.ACMMonitor` (``log_to`` also writes its CSV/JSON/PNG there). Rank 0 reads."""

    def __init__(self, probe, every: int = 1, layer: str | None = None, embedding: str | None = "tsne",
                 log_to=None, **options):
        _require_lightning()
        self.args = dict(probe=probe, every=every, layer=layer, embedding=embedding, log_to=log_to, **options)
        self.monitor = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from ..monitor import ACMMonitor

        if trainer.is_global_zero:
            self.monitor = ACMMonitor(pl_module, **self.args)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None:
            return
        reading = self.monitor.step(step=trainer.current_epoch + 1)
        if reading is not None:
            metrics = {"acm": reading.acm}
            if len(reading.values) > 1:
                metrics["acm_std"] = reading.std
            pl_module.log_dict(metrics, on_epoch=True, rank_zero_only=True)
