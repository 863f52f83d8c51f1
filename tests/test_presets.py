"""Model presets (models/presets, srsum.presets): listed, loaded, and filling train/convert settings."""

import json

import pytest
from conftest import CNN_SAMPLE
from typer.testing import CliRunner

from srsum.cli import app
from srsum.errors import SrsumError
from srsum.presets import DEFAULT_PRESET, PRESETS_DIR, list_presets, load_preset

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_shipped_presets_cover_the_four_shapes_and_read_as_the_engine_takes_them():
    from srsum.engine.settings import clamp_from_text, make_settings

    names = [p.name for p in list_presets()]
    assert names == ["bart-base", "bart-large", "t5-base", "t5-small"] and DEFAULT_PRESET in names
    for preset in list_presets():
        family = "bart" if "bart" in preset.name else "t5"
        settings = make_settings(family, preset.attention, preset.seg_size, preset.schedule_length,
                                 clamp_from_text(preset.clamp), memory_ratio=preset.memory_ratio)
        assert settings.seg_size == preset.seg_size and preset.description
    paper = load_preset("t5-small")
    assert (paper.model, paper.attention, paper.seg_size) == ("t5-small", "srformer", 64)


def test_a_preset_file_by_path_and_bad_presets_are_one_line(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"description": "mine", "model": "./tiny", "seg_size": 8}))
    assert load_preset(str(mine)).seg_size == 8 and load_preset(str(mine)).attention == "srformer"
    with pytest.raises(SrsumError, match="no preset 'nope'; choose one of: bart-base, bart-large, t5-base, t5-small"):
        load_preset("nope")
    mine.write_text(json.dumps({"description": "x", "model": "m", "segsize": 8}))
    with pytest.raises(SrsumError, match="segsize"):
        load_preset(str(mine))


def test_cli_presets_lists_them():
    result = CliRunner().invoke(app, ["presets", "--json"])
    assert result.exit_code == 0, result.output
    assert [p["name"] for p in json.loads(result.output)] == [p.name for p in list_presets()]
    table = CliRunner().invoke(app, ["presets"])
    assert table.exit_code == 0 and str(PRESETS_DIR.name) in table.output and "facebook/bart-large" in table.output


def test_train_without_model_takes_the_papers_preset(tmp_path, monkeypatch):
    """`srsum train --dataset X` alone: t5-small, SRformer, s 64 (the Hub is unreachable here, so it stops there)."""
    seen = {}

    def fake_training(config, reporter, log_lines=False):
        seen.update(model=config.model, attention=config.attention, seg_size=config.seg_size, clamp=config.clamp)
        raise SrsumError("stop here")

    monkeypatch.setattr("srsum.training.train", fake_training)
    result = CliRunner().invoke(app, ["train", "--dataset", str(CNN_SAMPLE)])
    assert result.exit_code == 2 and "Error: stop here" in result.output
    assert "no --model: the paper's setting, preset t5-small" in result.output
    assert seen == {"model": "t5-small", "attention": "srformer", "seg_size": 64, "clamp": "off"}
    # an option given wins over the preset's value; --model wins over its model
    result = CliRunner().invoke(app, ["train", "--preset", "bart-base", "--model", "./m", "--seg-size", "16",
                                      "--dataset", str(CNN_SAMPLE)])
    assert seen == {"model": "./m", "attention": "srformer", "seg_size": 16, "clamp": "off"}
    result = CliRunner().invoke(app, ["train", "--resume", "--preset", "t5-small"])
    assert result.exit_code == 2 and "--preset starts a new run" in result.output


def test_convert_with_a_preset_file(tmp_path, tiny_t5_dir):
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"description": "tiny", "model": str(tiny_t5_dir), "seg_size": 8,
                                  "schedule_length": 16}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", "--preset", str(preset), "--output", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["srformer_seg_size"] == 8 and config["srformer_schedule_length"] == 16
    missing = CliRunner().invoke(app, ["convert", "--output", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "MODEL or --preset required" in missing.output
