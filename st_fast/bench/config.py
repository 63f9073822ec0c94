"""The benchmark matrix: a YAML file, validated up front with errors that say what to fix.

    name: fmnist-cpu                   # optional
    dataset: fashion-mnist             # required
    attacks: [clean, sp, ar, ops]      # required; "clean" = no poison
    defences: [nt, st-full, at]        # required; methods, registered defences or variants
    architectures: [small-resnet]      # default [small-resnet]
    ratios: [1.0]                      # protection ratios (fraction poisoned)
    seeds: [0, 1, 2]
    poison_seed: 0                     # one poisoned set per (attack, ratio), shared by seeds
    train: {epochs: 6, train_subset: 10000, test_subset: 2000, val_size: 20}   # TrainConfig
    st: {tau: 1.75, alpha: 0.25}       # STConfig fields for every ST-family method
    attack_params: {ar: {eps: 1.0}}    # per-attack generate() keyword arguments
    poison_files:                      # poisons made elsewhere, used like attacks by name
      sp-authors: {path: data/sp.npy, attack: sp, norm: l2, eps: 0.6588}   # options of
      em-ours: {path: poisons/em.pt}   # `st-fast poison --from`; 'ratio' (default 1) labels it
    variants:                          # named defences built from others + overrides
      st-retry: {base: st, rollback: retry}       # TrainConfig / STConfig fields
      d-vae-w64: {base: d-vae, defence: {width: 64, epochs: 60}}   # the defence's settings
    keep_checkpoints: false            # drop each finished cell's checkpoint.pt
    select:                            # extra table column: per (attack, seed), the candidate
      st-val: [st, st-retry]           # with the best accuracy on the clean validation images
    report:                            # optional extras in results.md
      summary: [nt, st, st-val]        # a compact table of final accuracy, these columns only
      paired: ["st:nt"]                # A - B paired by seed, per attack
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig
from ..errors import UserError

REQUIRED = ("dataset", "attacks", "defences")
KNOWN = {"name", "dataset", "attacks", "defences", "architectures", "ratios", "seeds", "poison_seed",
         "train", "st", "attack_params", "variants", "data_root", "keep_checkpoints", "select",
         "report", "poison_files"}


@dataclass
class BenchConfig:
    dataset: str
    attacks: list[str]
    defences: list[str]
    name: str = "bench"
    architectures: list[str] = field(default_factory=lambda: ["small-resnet"])
    ratios: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    poison_seed: int = 0
    train: dict = field(default_factory=dict)
    st: dict = field(default_factory=dict)
    attack_params: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    data_root: str | None = None
    keep_checkpoints: bool = False     # finished cells drop checkpoint.pt (results stay small)
    select: dict = field(default_factory=dict)   # name -> defences to choose among by val_acc
    report: dict = field(default_factory=dict)   # summary: [columns], paired: ["A:B", ...]
    poison_files: dict = field(default_factory=dict)  # name -> {path, import options, ratio}

    def cells(self) -> list[Cell]:
        """Every cell; a generated attack has one per ratio, a poison file one (its own ratio),
        the clean set one (its id has no ratio: cells of the other ratios would be the same)."""
        cells = []
        for a in self.attacks:
            ratios = self.ratios[:1] if a == "clean" else self.ratios
            if a in self.poison_files:
                ratios = [float(self.poison_files[a].get("ratio", 1.0))]
            cells += [Cell(a, r, arch, d, s) for r, arch, d, s in itertools.product(
                ratios, self.architectures, self.defences, self.seeds)]
        return cells

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Cell:
    attack: str
    ratio: float
    arch: str
    defence: str
    seed: int

    @property
    def id(self) -> str:
        ratio = "" if self.attack == "clean" else f"-r{self.ratio:g}"
        return f"{self.attack}{ratio}-{self.arch}-{self.defence}-s{self.seed}"


def load_config(path: str | Path) -> BenchConfig:
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such benchmark config")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from err
    return parse_config(raw, source=str(path))


def parse_config(raw, source: str = "config") -> BenchConfig:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of fields at the top level")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise UserError(f"{source}: missing required field(s): {', '.join(missing)} "
                        f"(a benchmark needs {', '.join(REQUIRED)})")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise UserError(f"{source}: unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}")
    for key in ("attacks", "defences", "architectures", "ratios", "seeds"):
        if key in raw and (not isinstance(raw[key], list) or not raw[key]):
            raise UserError(f"{source}: '{key}' must be a non-empty list")
    cfg = BenchConfig(**raw)
    validate(cfg, source)
    return cfg


def validate(cfg: BenchConfig, source: str = "config") -> None:
    from ..attacks import check_params
    from ..attacks import resolve as resolve_attack
    from ..config import STConfig
    from ..data import canonical_dataset
    from ..models import canonical_arch

    validate_poison_files(cfg, source)
    try:  # the aliases load_dataset and build_model accept are accepted here too
        cfg.dataset = canonical_dataset(cfg.dataset)
        cfg.architectures = [canonical_arch(a) for a in cfg.architectures]
        for a in cfg.attacks:
            if a != "clean" and a not in cfg.poison_files:
                resolve_attack(a)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    for r in cfg.ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < float(r) <= 1:
            raise UserError(f"{source}: ratios: each must be a number in (0, 1], got {r!r}")
    for key, values in (("seeds", cfg.seeds), ("poison_seed", [cfg.poison_seed])):
        for s in values:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise UserError(f"{source}: {key}: each must be an integer >= 0, got {s!r}")
    for key in ("train", "st", "attack_params", "variants", "select", "report"):
        if not isinstance(getattr(cfg, key), dict):
            raise UserError(f"{source}: '{key}' must be a mapping, got {getattr(cfg, key)!r}")
    for name, spec in cfg.variants.items():
        if not isinstance(spec, dict) or "base" not in spec:
            raise UserError(f"{source}: variant {name!r} needs a 'base' (a method or defence) and overrides")
    for name, among in cfg.select.items():
        if not isinstance(among, list) or not set(among) <= set(cfg.defences):
            raise UserError(f"{source}: select {name!r} must list defences of this benchmark")
        if not cfg.train.get("val_size"):
            raise UserError(f"{source}: select needs clean validation images: set train.val_size (e.g. 20)")
    validate_report(cfg.report, list(cfg.defences) + list(cfg.select), source)
    TrainConfig.from_dict({**cfg.train, "dataset": cfg.dataset}, source=f"{source}: train")
    STConfig.from_dict(cfg.st, source=f"{source}: st")
    for d in cfg.defences:  # every cell's configs, built now: a bad value stops the bench before any work
        defence_configs(cfg, d, source=f"{source}: defence {d}")
    for a in cfg.attacks:
        if a != "clean" and a not in cfg.poison_files:
            params = cfg.attack_params.get(a, {})
            if not isinstance(params, dict):
                raise UserError(f"{source}: attack_params.{a} must be a mapping, got {params!r}")
            for r in cfg.ratios:
                check_params(a, {k: v for k, v in params.items() if k not in ("ratio", "seed", "subset")},
                             ratio=params.get("ratio", r), seed=params.get("seed", cfg.poison_seed),
                             subset=params.get("subset"), source=f"{source}: attack_params.{a}")


def validate_poison_files(cfg: BenchConfig, source: str) -> None:
    """Each entry: a name not taken by an attack, listed in ``attacks``, an existing ``path``
    (made absolute: cells may run on other machines sharing the disk), a ratio in (0, 1]; the
    other keys go to ``st_fast.attacks.import_any`` (checked when the file is imported, before
    any cell trains)."""
    from ..attacks import ATTACKS

    if not isinstance(cfg.poison_files, dict):
        raise UserError(f"{source}: 'poison_files' must be a mapping of name -> {{path: ..., options}}")
    for name, entry in cfg.poison_files.items():
        where = f"{source}: poison_files.{name}"
        if name == "clean" or name in ATTACKS:
            raise UserError(f"{where}: the name is taken by {'the clean set' if name == 'clean' else 'an attack'}; "
                            f"name the file something else (e.g. {name}-file)")
        if name not in cfg.attacks:
            raise UserError(f"{where}: not in 'attacks'; list it there to train on it")
        if name in cfg.attack_params:
            raise UserError(f"{where}: attack_params do not apply to a poison file (give import options in its entry)")
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UserError(f"{where}: needs a 'path' (a poisoned-set file, array file or PNG folder) "
                            f"and optional import options, got {entry!r}")
        path = Path(entry["path"]).expanduser()
        if not path.exists():
            raise UserError(f"{where}: {path}: no such file or folder")
        ratio = entry.get("ratio", 1.0)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < float(ratio) <= 1:
            raise UserError(f"{where}: ratio must be a number in (0, 1], got {ratio!r}")
        cfg.poison_files[name] = {**entry, "path": str(path.resolve())}


def defence_configs(cfg: BenchConfig, name: str, source: str = "config", **fixed):
    """(TrainConfig, STConfig, Defence) of defence ``name`` in this bench (a variant's base and
    overrides applied); ``fixed``: per-cell TrainConfig fields (arch, seed, poison, device)."""
    from ..config import STConfig
    from ..defences import configure, resolve

    variant = dict(cfg.variants.get(name, {}))
    defence = resolve(variant.pop("base", name))
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        defence = configure(defence, variant_defence_params(cfg, name))
    except UserError as err:
        raise UserError(f"{source}: variant {name}: {err}") from None
    train = {**cfg.train, **defence.train_overrides, **{k: v for k, v in variant.items() if k in train_fields}}
    train.update(dataset=cfg.dataset, data_root=cfg.data_root, **fixed)
    st = {**cfg.st, **{k: v for k, v in variant.items() if k not in train_fields and k != "defence"},
          "method": defence.method}
    return (TrainConfig.from_dict(train, source=source), STConfig.from_dict(st, source=source), defence)


def variant_defence_params(cfg: BenchConfig, name: str) -> dict:
    """Variant ``name``'s ``defence:`` mapping, the settings of its base defence
    (``Defence.params``; e.g. ``d-vae-w64: {base: d-vae, defence: {width: 64}}``). Kept apart
    from the variant's other keys because names such as epochs and lr are TrainConfig fields too."""
    params = cfg.variants.get(name, {}).get("defence", {})
    if not isinstance(params, dict):
        raise UserError(f"'defence' must be a mapping of the defence's settings, got {params!r}")
    return dict(params)


def parse_pair(spec: str, source: str = "--paired") -> tuple[str, str]:
    """"A:B" -> (A, B), with an error that says what the form is."""
    a, sep, b = str(spec).partition(":")
    if not (sep and a and b):
        raise UserError(f"{source} wants two defence names as A:B, got {spec!r}")
    return a, b


def validate_report(report, names: list[str], source: str = "config") -> None:
    """``report: {summary: [columns], paired: ["A:B", ...]}``; every name a defence or selection."""
    if not isinstance(report, dict) or not set(report) <= {"summary", "paired"}:
        raise UserError(f"{source}: 'report' takes 'summary' (a list of columns) and 'paired' "
                        f"(a list of \"A:B\"), got {report!r}")
    used = list(report.get("summary", []))
    for spec in report.get("paired", []):
        used += parse_pair(spec, f"{source}: report.paired")
    unknown = [n for n in used if n not in names]
    if unknown:
        raise UserError(f"{source}: report names {', '.join(unknown)}, which are not defences or "
                        f"selections of this benchmark")
