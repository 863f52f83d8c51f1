"""Model presets: the SRformer settings a run starts from, one JSON file per model shape in ``models/presets/``.

A preset names the Hub model and the conversion settings (variant, segment size s, schedule length G, calibration
ratio, clamp). ``srsum train --preset`` / ``srsum convert --preset`` fill every setting the command line left unset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from srsum.errors import SrsumError

PRESETS_DIR = Path(__file__).resolve().parents[1] / "models" / "presets"
DEFAULT_PRESET = "t5-small"  # the paper's setting: what `srsum train --dataset ...` uses without --model


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str
    attention: str = "srformer"
    seg_size: int = 64
    schedule_length: int = 128
    memory_ratio: float = 0.05
    clamp: str = "off"

    def settings(self) -> dict:
        """The conversion settings, by the names srsum train and convert use."""
        return {"attention": self.attention, "seg_size": self.seg_size, "schedule_length": self.schedule_length,
                "memory_ratio": self.memory_ratio, "clamp": self.clamp}

    def fill(self, **given) -> dict:
        """The model and conversion settings: each one ``given`` (None: not given) wins over the preset's."""
        own = {"model": self.model, **self.settings()}
        return {name: value if given.get(name) is None else given[name] for name, value in own.items()}


def _read(path: Path, name: str) -> Preset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SrsumError(f"preset {path}: cannot be read ({error})") from None
    known = {f.name for f in fields(Preset)} - {"name"}
    unknown = sorted(set(data) - known) if isinstance(data, dict) else ["(not a JSON object)"]
    if unknown or "model" not in data or "description" not in data:
        raise SrsumError(f"preset {path}: needs model and description, and only {', '.join(sorted(known))} "
                         f"(found {', '.join(unknown) or 'no model or description'})")
    return Preset(name=name, **data)


def list_presets(folder: Path = PRESETS_DIR) -> list[Preset]:
    """Every preset shipped in ``folder``, by name."""
    return [_read(path, path.stem) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def load_preset(name_or_path: str, folder: Path = PRESETS_DIR) -> Preset:
    """A shipped preset by name (``t5-small``), or a preset file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return _read(path, path.stem)
    shipped = folder / f"{name_or_path}.json"
    if shipped.is_file():
        return _read(shipped, name_or_path)
    names = ", ".join(p.name for p in list_presets(folder)) or f"none in {folder}"
    raise SrsumError(f"--preset: no preset {name_or_path!r}; choose one of: {names} (or a .json file)")
