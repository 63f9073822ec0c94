"""Training hyperparameters, each declared once (type, default, allowed values, help).

``TrainConfig`` holds what natural training needs; ``STConfig`` what the staged method adds
(ACM trigger, rollback, multipliers, fine-tune). Both are checked when built (a bad value is
a one-line :class:`UserError` naming the field), give the CLI its flags
(:func:`st_fast.options.add_arguments`) and round-trip through plain dicts (config.json, the
checkpoint, bench YAML).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import options
from .errors import UserError
from .options import option


def _architectures():
    from .models import ARCHITECTURES
    return ARCHITECTURES


def _methods():
    from .methods import METHODS
    return METHODS


def _radii():
    from .kernels.class_stats import RADIUS_KINDS
    return RADIUS_KINDS


def _acm_backends():
    from .cluster.tsne import BACKENDS
    return ("auto", *BACKENDS)


def _rules():
    from .schedule import RULES
    return RULES


class _Config:
    """Shared behaviour: validated on construction, dict round trip, field-named errors."""

    def __post_init__(self):
        options.validate(self)

    def validate(self):
        options.validate(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = ""):
        return options.from_dict(cls, d, source)


@dataclass
class TrainConfig(_Config):
    # not checked against the registry here: a Trainer may be handed any in-memory dataset,
    # and then this is only its label; prepare_data (the only loader) refuses unknown names
    dataset: str = option("fashion-mnist", "dataset to train on: fashion-mnist, cifar10, cifar100, svhn "
                                           "or imagenet-mini (aliases such as cifar-10 are accepted)")
    arch: str = option("small-resnet", "architecture", choices=_architectures)
    epochs: int = option(8, "training epochs (step 1)", ge=1)
    batch_size: int = option(128, "images per optimizer step", ge=1)
    lr: float = option(0.1, "base learning rate, cosine-decayed (paper: 0.1, 0.2 for ST-CG)", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(5e-4, "SGD weight decay", ge=0)
    dropout: float = option(0.0, "dropout before the final linear layer (an ablation)", ge=0, lt=1)
    nesterov: bool = option(False, "Nesterov momentum")
    seed: int = option(0, "seed of the model, the data order, the subsets and the augmentation", ge=0)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    crop_padding: int = option(4, "random-crop padding in pixels (torchvision's 4 at 32 px)", ge=0)
    flip: bool = option(True, "random horizontal flip", flag="--flip")
    cg: bool = option(False, "colour jitter (p=0.8) + grayscale (p=0.2) augmentation in step 1 "
                             "(methods with CG in their name switch it on)", cli=False)
    channels_last: bool | None = option(None, "channels-last memory format (none: on for CUDA)", cli=False)
    amp: str = option("auto", "mixed precision: auto (bf16 on CUDA), bf16 or off", choices=("auto", "bf16", "off"))
    optimizer: str = option("auto", "auto (the fused multi-tensor SGD when available), fused or torch",
                            choices=("auto", "fused", "torch"))
    train_subset: int | None = option(None, "train on the first N of a seeded permutation of the "
                                            "training set (none: all)", ge=1)
    test_subset: int | None = option(None, "evaluate on N seeded test images (none: all)", ge=1)
    val_size: int = option(0, "clean training images held out for tuning and selection "
                              "(the tuner uses 20; never the test set)", ge=0)
    data_root: str | None = option(None, "directory holding the dataset files")
    download: bool = option(False, "download the dataset if it is missing")
    poison: str | None = option(None, "poisoned-set file (from st-fast poison) to train on")

    def __post_init__(self):
        if isinstance(self.dataset, str):   # the aliases load_dataset accepts, everywhere
            from .data import canonical_dataset
            self.dataset = canonical_dataset(self.dataset, strict=False)
        if isinstance(self.arch, str):
            from .models import canonical_arch
            self.arch = canonical_arch(self.arch, strict=False)
        super().__post_init__()


@dataclass
class STConfig(_Config):
    method: str = option("nt", "training method: the paper's nt, nt-cg, st, st-cg, st-full, or the "
                               "controls nt-cg-ft, acm-es, acm-es-ft, acm-es-cg-ft", choices=_methods)
    tau: float = option(3.5, "ACM threshold (t-SNE ACM; chosen from measurements, docs/st.md)", gt=0)
    alpha: float = option(0.25, "speed of the multiplier front per trigger", ge=0)
    trigger: str = option("absolute", "absolute: ACM > tau; relative: ACM > tau x first ACM; "
                                      "rise: ACM - last accepted ACM > tau",
                          choices=("absolute", "relative", "rise"))
    rollback: str = option("consume", "consume (the paper: move on) or retry (re-run the rejected "
                                      "epoch with the new multipliers)", choices=("consume", "retry"))
    check_every: int | None = option(None, "optimizer steps between ACM checks (none: once per epoch)", ge=1)
    freeze_bn: bool = option(False, "units with multiplier 0 keep their BatchNorm statistics")
    acm_layer: str | None = option(None, "unit whose output ACM reads (none: penultimate)")
    acm_per_class: int | None = option(None, "ACM images per class (none: 100 for <= 10 classes, "
                                             "else 50, the paper's sizes)", ge=2)
    acm_classes: int | None = option(10, "ACM on the first k classes (paper: 10; none: all)", ge=2)
    acm_embedding: str | None = option("tsne", "embedding before ACM (none: raw features)",
                                       choices=("tsne", "pca", None))
    acm_radius: str = option("mean", "class radius r_k", choices=_radii)
    acm_backend: str = option("auto", "t-SNE backend", choices=_acm_backends)
    log_acm: bool = option(True, "measure ACM also for methods that do not act on it "
                                 "(nt, nt-cg, nt-cg-ft)", flag="--acm-log")
    multiplier_rule: str = option("linear", "per-unit lr multiplier rule (docs/st.md)", choices=_rules)
    max_rollbacks: int = option(50, "rollbacks in total; reaching it ends step 1", ge=0)
    max_retries: int = option(3, "retries per epoch (rollback retry only)", ge=0)
    ft_epochs: int = option(2, "fine-tune epochs (step 2 of st-full and the -ft methods)", ge=0)
    ft_lr: float = option(0.01, "fine-tune base learning rate (cosine-decayed)", gt=0)

    @property
    def spec(self):
        return _methods()[self.method]


def pick_fields(cls, d: dict) -> dict:
    """The entries of ``d`` that are fields of dataclass ``cls``; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(names))}")
    return dict(d)
