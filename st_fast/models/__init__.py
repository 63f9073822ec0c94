"""Models built by name; each is a :class:`UnitNet` exposing ``units()`` and ``features()``."""

from __future__ import annotations

from ..errors import UserError
from ..registry import canonical
from .base import Head, Normalize, UnitNet
from .densenet import densenet121
from .resnet import resnet18, resnet50, small_resnet
from .vgg import vgg16
from .wrn import wrn28_10, wrn34_10

ARCHITECTURES = {
    "small-resnet": small_resnet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "densenet121": densenet121,
    "wrn28-10": wrn28_10,
    "wrn34-10": wrn34_10,
}

__all__ = ["ARCHITECTURES", "build_model", "canonical_arch", "UnitNet", "Head", "Normalize", "unit_param_index"]


ALIASES = {"wrn-28-10": "wrn28-10", "wrn-34-10": "wrn34-10", "resnet-small": "small-resnet"}


def canonical_arch(name: str, strict: bool = True) -> str:
    """The registered name for architecture ``name`` or one of its aliases."""
    return canonical(name, ARCHITECTURES, ALIASES, "architecture", strict)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, *, mean=None, std=None,
                image_size: int = 32, dropout: float = 0.0) -> UnitNet:
    """Build architecture ``name`` (see ``ARCHITECTURES``) for images in [0, 1].

    ``mean``/``std`` are the dataset's channel statistics (applied inside the model);
    ``image_size`` >= 96 switches ResNets/DenseNet to an ImageNet-style stem.
    """
    key = canonical_arch(name)
    if num_classes < 2 or in_channels < 1:
        raise UserError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes}, {in_channels}")
    return ARCHITECTURES[key](num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                              image_size=image_size, dropout=dropout)


def unit_param_index(model: UnitNet) -> list[int]:
    """For each tensor of ``model.parameters()``, the index of the unit that owns it."""
    owner = {id(p): u for u, unit in enumerate(model.units()) for p in unit.parameters()}
    return [owner[id(p)] for p in model.parameters()]
