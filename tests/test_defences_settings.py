"""Defence settings (Defence.params): configure, `st-fast train --defence-param`, bench variants."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import st_fast
from st_fast.bench.config import defence_configs, parse_config
from st_fast.cli import main
from st_fast.config import STConfig, TrainConfig
from st_fast.defences import DEFENCES, configure
from st_fast.defences.dvae import PUBLISHED
from st_fast.errors import UserError

from .helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_d_vae_takes_the_published_settings():
    published = configure(DEFENCES["d-vae"], dataclasses.asdict(PUBLISHED))
    assert published.params == dataclasses.asdict(PUBLISHED) and "for the CPU" not in published.summary
    assert "for the CPU" in DEFENCES["d-vae"].summary           # the registered default is unchanged
    lists = configure(DEFENCES["d-vae"], {"kl_targets": [1, 2.5]})   # YAML gives lists and ints
    assert lists.params["kl_targets"] == (1.0, 2.5)


@pytest.mark.parametrize("defence, params, message", [
    ("d-vae", {"widht": 16}, "has no setting widht; its settings (defaults): width=8"),
    ("d-vae", {"width": 3}, "width must be an even number"),             # the defence's own check
    ("d-vae", {"epochs": 2.5}, "epochs must be int like its default 5"),
    ("d-vae", {"epochs": True}, "epochs must be int"),
    ("d-vae", {"kl_targets": [1.0]}, "kl_targets must be tuple"),
    ("ortho-proj", {"lr": -1}, "ortho-proj lr must be > 0"),
    ("iss-jpeg", {"quality": 10}, "has no setting quality; its settings (defaults): none"),
])
def test_bad_settings_are_one_line(defence, params, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configure(DEFENCES[defence], params)


def test_ortho_proj_settings_change_what_it_does():
    train = toy_dataset(40, size=8)
    default = DEFENCES["ortho-proj"].prepare(train, 0)
    short = configure(DEFENCES["ortho-proj"], {"epochs": 1}).prepare(train, 0)
    assert short.images.shape == default.images.shape and not (short.images == default.images).all()


def _tiny_run(tiny_fashion, out, *extra):
    return main(["train", "--data-root", str(tiny_fashion), "--epochs", "1", "--batch-size", "32",
                 "--device", "cpu", "--no-acm-log", "--out", str(out), "--no-progress",
                 "--defence", "ortho-proj", *extra])


def test_cli_defence_param_is_recorded_and_resume_with_another_is_refused(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "run"
    assert _tiny_run(tiny_fashion, out, "--defence-param", "epochs=2") == 0
    capsys.readouterr()
    assert _tiny_run(tiny_fashion, out, "--defence-param", "epochs=3", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "defence_params" in err[0]


@pytest.mark.parametrize("flag, message", [
    ("epochs", "--defence-param wants KEY=VALUE"),
    ("nosuch=1", "ortho-proj has no setting nosuch"),
    ("epochs=[1", "is not a value"),
])
def test_cli_bad_defence_param_is_one_line_exit_2(tiny_fashion, tmp_path, capsys, flag, message):
    assert _tiny_run(tiny_fashion, tmp_path / "run", "--defence-param", flag) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_settings_without_a_defence_are_refused():
    cfg = TrainConfig(epochs=1, device="cpu")
    with pytest.raises(UserError, match="without a defence"):
        st_fast.train(cfg, STConfig(method="nt"), defence_params={"epochs": 1}, progress=False,
                      data=(toy_dataset(16, size=8), toy_dataset(8, size=8), None))


def test_bench_variant_keys_go_to_the_defence():
    raw = {"dataset": "fashion-mnist", "attacks": ["clean"], "defences": ["d-vae-w16", "ortho-proj-e5"],
           "variants": {"d-vae-w16": {"base": "d-vae", "epochs": 3, "defence": {"width": 16, "epochs": 2, "lr": 0.2}},
                        "ortho-proj-e5": {"base": "ortho-proj", "defence": {"epochs": 5}}}}
    cfg = parse_config(yaml.safe_load(yaml.safe_dump(raw)))
    tcfg, _, dvae = defence_configs(cfg, "d-vae-w16")
    assert dvae.params["width"] == 16 and dvae.params["epochs"] == 2
    # epochs / lr under defence: are the D-VAE's; beside it, the training's
    assert dvae.params["lr"] == 0.2 and tcfg.lr == TrainConfig().lr and tcfg.epochs == 3
    assert defence_configs(cfg, "ortho-proj-e5")[2].params["epochs"] == 5
    raw["variants"]["d-vae-w16"]["defence"]["width"] = 7
    with pytest.raises(UserError, match="variant d-vae-w16: d-vae width must be an even number"):
        parse_config(yaml.safe_load(yaml.safe_dump(raw)))
