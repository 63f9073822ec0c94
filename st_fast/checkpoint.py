"""Checkpoints that cannot run code and belong to one run.

A checkpoint (``run_dir/checkpoint.pt``, written atomically after every epoch) holds tensors
and plain containers only, so it loads with ``weights_only=True``, plus ``run``: every setting
that decides the run's result. Resuming compares that record with the new run's and refuses
any difference, naming each field old -> new.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

CHECKPOINT = "checkpoint.pt"
# Version 2: loads with weights_only=True and records the run it belongs to ("run"), so a
# resume can refuse a changed setting. Earlier checkpoints recorded too little to tell.
CHECKPOINT_FORMAT = "st_fast-checkpoint-2"
# TrainConfig fields that do not change a run's result (where the data lives, how it got
# there, the device string: the resolved device type is compared instead; the poison file by
# its SHA-256, not its path)
NOT_RESULT_FIELDS = ("device", "data_root", "download", "poison")


def peek_checkpoint(run_dir: Path, writer: str) -> dict | None:
    """The run record of ``run_dir``'s checkpoint (None if there is none), refusing, before any
    work, a file that is not a current st_fast checkpoint or was written by another command."""
    path = Path(run_dir) / CHECKPOINT
    return read_checkpoint(path, writer)["run"] if path.exists() else None


def read_checkpoint(path: Path, writer: str, map_location="cpu") -> dict:
    """The checkpoint at ``path``, loaded without running code, refused unless it is a current
    st_fast checkpoint written by ``writer``."""
    from .files import load_torch_file

    sd = load_torch_file(path, "st_fast checkpoint", map_location=map_location,
                         hint="delete it to start over, or use another --out")
    if not isinstance(sd, dict) or sd.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an st_fast checkpoint of format {CHECKPOINT_FORMAT} (an older "
                        "version's checkpoint records too little of its run to be resumed safely); "
                        "delete it to start over, or use another --out")
    record = sd.setdefault("run", {})
    if record.get("writer") != writer:
        raise UserError(f"{path} belongs to another run (writer {record.get('writer')!r} -> {writer!r}: "
                        f"written by another command); use another --out")
    return sd


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def record_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) of every leaf that differs between two nested
    records, in key order; a leaf missing on one side is '(unset)' there."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k, "(unset)"), b.get(k, "(unset)")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_same_run(path, old: dict, new: dict) -> None:
    """One line naming every field whose value differs between a checkpoint and this run."""
    diffs = [f"{k.split('.', 1)[-1] if k.startswith(('train.', 'st.')) else k} {x!r} -> {y!r}"
             for k, x, y in record_differences(old, new)]
    if diffs:
        raise UserError(f"{path} belongs to another run ({'; '.join(diffs)}); resume with the same "
                        "settings, or start in another --out")
