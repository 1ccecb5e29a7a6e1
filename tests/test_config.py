import argparse
import dataclasses
import json
from typing import Literal

import pytest

from tfcluster import config as C
from tfcluster.errors import UserError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy(C.RunConfig):
    units: int = 32
    """Hidden units."""
    attention: Literal["", "luong"] = ""
    """Attention kind."""
    feed: bool = True
    """Input feeding."""
    lr: float = 1.0
    """Learning rate."""

    def __post_init__(self):
        if self.units < 1:
            raise ValueError(f"--units must be positive, got {self.units}")


def parse(argv):
    p = argparse.ArgumentParser()
    C.add_config_flags(p, Toy)
    return C.config_from_args(Toy, p.parse_args(argv))


def test_flags_from_dataclass_with_docstrings_and_choices(capsys):
    p = argparse.ArgumentParser()
    C.add_config_flags(p, Toy)
    help_ = p.format_help()
    assert "--units" in help_ and "Hidden units." in help_ and "--out_dir" in help_
    with pytest.raises(SystemExit):
        p.parse_args(["--attention", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_bool_flags_accept_bare_true_false(tmp_path):
    cfg, explicit = parse(["--feed", "false", "--out_dir", str(tmp_path)])
    assert cfg.feed is False and explicit == {"feed": False, "out_dir": str(tmp_path)}
    cfg, _ = parse(["--feed", "--out_dir", str(tmp_path)])
    assert cfg.feed is True
    cfg, _ = parse(["--use_gpu", "--out_dir", str(tmp_path)])
    assert cfg.use_gpu is True


def test_precedence_defaults_preset_saved_flags(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"units": 64, "lr": 0.5}))
    out = tmp_path / "run"
    cfg, _ = parse(["--hparams_path", str(preset), "--out_dir", str(out), "--lr", "0.1"])
    assert (cfg.units, cfg.lr) == (64, 0.1)
    C.save(cfg)
    # A rerun reloads out_dir/config.json; flags typed again still win.
    cfg2, _ = parse(["--out_dir", str(out), "--units", "128"])
    assert (cfg2.units, cfg2.lr) == (128, 0.1)
    assert C.load(Toy, str(out)) == cfg


def test_bad_settings_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"unitz": 3}))
    with pytest.raises(UserError, match="unknown setting.*unitz"):
        parse(["--hparams_path", str(bad), "--out_dir", str(tmp_path / "x")])
    with pytest.raises(UserError, match="--units must be positive"):
        parse(["--units", "0", "--out_dir", str(tmp_path / "y")])
    with pytest.raises(UserError, match="settings file not found"):
        parse(["--hparams_path", str(tmp_path / "missing.json")])


def test_coerce_tune_values():
    assert C.coerce(Toy, "units", 64.0) == 64 and isinstance(C.coerce(Toy, "units", 64.0), int)
    assert C.coerce(Toy, "feed", "false") is False


def test_shipped_presets_load_by_name_and_are_valid():
    from tfcluster import workloads

    names = C.presets()
    assert {"nmt_iwslt15", "nmt_vi_en", "nmt_vi_en_attention", "nmt_en_zh"} <= set(names)
    iwslt = C.load_json("nmt_iwslt15")
    assert (iwslt["num_units"], iwslt["encoder_type"], iwslt["beam_width"], iwslt["decay_scheme"]) == (512, "bi", 10, "luong234")
    for name in names:
        wl = workloads.get(name.split("_")[0])
        C.build(wl.config, C.load_json(name), name)  # every key is a real setting
