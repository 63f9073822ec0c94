"""``st_fast.train``: the one entry point every command (train, demo, tune, bench cells) calls.

    result = st_fast.train(TrainConfig(poison="sp.pt", epochs=6), STConfig(method="st-full"),
                           defence="iss-jpeg", run_dir="runs/x")
    result.final_test_acc, result.peak_test_acc_oracle, result.val_acc, result.history

It prepares the data (load, poison, hold out the clean validation images, subset), runs the
defence's data step, builds the engine (st_fast.engine.Trainer) with the defence's per-batch
step, resumes or refuses the run directory's checkpoint, trains, and returns a
:class:`RunResult`. A defence's ``train_overrides`` are its defaults: they apply to the
TrainConfig fields the caller left at TrainConfig's own defaults (an explicit value wins), and
its method replaces the default method (nt) the same way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CHECKPOINT
from .config import STConfig, TrainConfig
from .data import prepare_data
from .engine import Trainer
from .errors import UserError
from .files import check_writable

RESUME_MODES = ("never", "auto", "require")


def fit_clean_model(ds, arch: str, epochs: int, device, seed: int, batch_size: int = 128,
                    lr: float = 0.1, progress: bool = False):
    """A crafting model trained on clean ``ds`` by the engine (NT: crop + flip, cosine lr), for
    the attacks that poison against one (hypo, tap)."""
    from .attacks.surrogate import crop_padding

    cfg = TrainConfig(dataset=ds.name, arch=arch, epochs=int(epochs), batch_size=batch_size, lr=lr,
                      seed=seed, device=str(device), optimizer="torch", amp="off",
                      crop_padding=crop_padding(ds))
    trainer = Trainer(cfg, None, ds, None, run_dir=None, progress=progress)
    trainer.fit()
    return trainer.model.eval()


def make_poison(name: str, dataset, **kwargs):
    """``st_fast.attacks.generate`` with the training engine for the attacks that need it."""
    from . import attacks

    return attacks.generate(name, dataset, fit_model=fit_clean_model, **kwargs)


@dataclass
class RunResult:
    """What one run produced (the engine itself is ``trainer``: model, history, checks)."""

    summary: dict
    val_acc: float | None        # accuracy on the clean validation images (None without them)
    val_size: int
    resumed: bool
    wall_s: float
    trainer: Trainer

    @property
    def history(self) -> list[dict]:
        return self.trainer.history

    @property
    def checks(self) -> list[dict]:
        return self.trainer.checks

    @property
    def final_test_acc(self) -> float | None:
        return self.summary["final_test_acc"]

    @property
    def peak_test_acc_oracle(self) -> float | None:
        """The best epoch's test accuracy: an oracle (it looks at the test set), never a choice."""
        return self.summary["peak_test_acc_oracle"]

    @property
    def model(self):
        return self.trainer.model


def with_defence_defaults(cfg: TrainConfig, defence) -> TrainConfig:
    """``cfg`` with the defence's train_overrides on the fields still at TrainConfig's defaults."""
    defaults = TrainConfig()
    unset = {k: v for k, v in defence.train_overrides.items() if getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **unset) if unset else cfg


def train(config: TrainConfig, st: STConfig | None = None, *, defence: str | None = None,
          defence_params: dict | None = None, run_dir: str | Path | None = None, resume: str = "never", writer: str = "api",
          progress: bool = True, data=None, run_extra: dict | None = None,
          profile_steps: int | None = None) -> RunResult:
    """Train one run and return its result.

    st: the method and its staged policy (None: natural training). defence: a registered
    defence (st_fast.defences.DEFENCES) applied around the method; defence_params: its
    settings in place of the defaults (``Defence.params``, e.g. {"width": 64} for d-vae). resume: "never" (a
    checkpoint already in ``run_dir`` is an error), "auto" (continue it if it is this run's)
    or "require" (it must exist). data: (train, test, val) already prepared from ``config``
    (callers that train several runs on one dataset); otherwise prepared here.
    profile_steps: first profile that many steps with torch.profiler (OUT/profile/).
    """
    from .defences import DEFENCES, configure

    if resume not in RESUME_MODES:
        raise UserError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    st = st or STConfig(method="nt")
    run_dir = Path(run_dir) if run_dir else None
    has_checkpoint = run_dir is not None and (run_dir / CHECKPOINT).exists()
    if has_checkpoint and resume == "never":
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume == "require" and not has_checkpoint:
        raise UserError(f"{run_dir}: no checkpoint to resume; drop --resume to start a new run there")
    if run_dir is not None:   # before the data, the defence and the model: not after an epoch
        check_writable(run_dir, "run directory")
    extra = dict(run_extra or {})
    the_defence = None
    if defence not in (None, "none"):
        if defence not in DEFENCES:
            raise UserError(f"unknown defence {defence!r}; choose one of: none, {', '.join(DEFENCES)} "
                            "(training methods go in --method)")
        the_defence = configure(DEFENCES[defence], defence_params)
        config = with_defence_defaults(config, the_defence)
        if st.method == STConfig().method and the_defence.method != st.method:
            st = dataclasses.replace(st, method=the_defence.method)   # e.g. cg-val-es trains NT-CG
        extra["defence"] = defence
        if defence_params:   # recorded only when given: runs without them keep their old record
            extra["defence_params"] = dict(the_defence.params)
    elif defence_params:
        raise UserError("defence settings were given without a defence; name one (--defence)")
    t0 = time.perf_counter()
    train_set, test_set, val_set = data if data is not None else prepare_data(config, with_val=True)
    if the_defence is not None and the_defence.prepare is not None:
        train_set = the_defence.prepare(train_set, config.seed)
    trainer = Trainer(config, st, train_set, test_set, run_dir=run_dir, progress=progress,
                      writer=writer, run_extra=extra)
    if the_defence is not None and the_defence.batch_transform is not None:
        trainer.batch_transform = the_defence.batch_transform(trainer)
    if the_defence is not None and the_defence.select_on_val:
        if val_set is None or not len(val_set):
            raise UserError(f"defence {defence} keeps the epoch that is best on clean validation images: "
                            "set val_size (--val-size; the tuner uses 20)")
        trainer.select_on = val_set
    resumed = resume != "never" and trainer.try_resume(require=resume == "require")
    if resumed:
        trainer.log(f"resuming {run_dir} after {len(trainer.history)} epochs")
    if profile_steps:
        from .profiling import profile_training

        prof = profile_training(trainer, steps=profile_steps, out_dir=(run_dir or Path("runs/profile")) / "profile")
        trainer.log(f"profile: {prof['images_per_s']:.0f} img/s over {prof['steps']} steps -> "
                    f"{prof['trace']}, {prof['summary']}")
    trainer.fit()
    val_acc = trainer.evaluate(val_set) if val_set is not None and len(val_set) else None
    return RunResult(summary=trainer.summary(), val_acc=val_acc, val_size=len(val_set) if val_set is not None else 0,
                     resumed=resumed, wall_s=time.perf_counter() - t0, trainer=trainer)
