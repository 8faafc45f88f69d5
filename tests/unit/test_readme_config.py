"""The README's configuration table lists exactly the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from wallet_platform.config import OPTIONS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_rows() -> dict[str, tuple[str, str]]:
    text = README.read_text()
    block = re.search(r"<!-- config:begin -->(.*?)<!-- config:end -->", text, re.S)
    assert block, "README.md has no configuration table"
    rows: dict[str, tuple[str, str]] = {}
    for line in block.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`WALLET_"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[3])
    return rows


def test_every_setting_is_documented_with_its_flag_and_default() -> None:
    rows = _table_rows()
    defaults = Settings()
    assert set(rows) == {option.env for option in OPTIONS}
    for option in OPTIONS:
        flag, default = rows[option.env]
        assert flag == "--" + option.name.replace("_", "-"), option.env
        value = getattr(defaults, option.name)
        if option.name == "listen":
            assert default == "per service"
        elif isinstance(value, bool):  # a yes/no setting is written as its env value
            assert default == f"`{int(value)}`", option.env
        elif value in ("", None):
            assert default == "empty", option.env
        else:
            assert default == f"`{value}`", option.env
