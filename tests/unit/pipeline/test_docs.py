"""Every setting is documented, with its default, where operators look."""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[3]


def test_readme_table_lists_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    for _, setting in SETTINGS:
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{setting.env}`")]
        assert rows, f"README has no row for {setting.env}"
        default = f"`{setting.default}`" if setting.default else "empty"
        assert default in rows[0], f"README row of {setting.env} lacks its default {default}"


def test_env_example_sets_every_setting() -> None:
    lines = (ROOT / "compose" / "env.example").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert names == [setting.env for _, setting in SETTINGS]
