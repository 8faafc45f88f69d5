"""JSON log lines carry the audit/request/transfer ids, and ``log_file`` rotates."""

from __future__ import annotations

import json
import logging
import logging.handlers

import pytest

from wallet_platform.observability.logs import log_context, setup_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_log_file_gets_json_lines_with_ids_and_rotates(tmp_path, restore_root_logger):
    path = tmp_path / "wallet.log"
    setup_logging("INFO", "json", str(path))
    with log_context(request_id="r-1", transfer_id="t-1", audit_id="a-1"):
        logging.getLogger("wallet.test").info("deposit %s", 5, extra={"wallet_id": "w"})
    file_handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.handlers.RotatingFileHandler)
    ]
    assert len(file_handlers) == 1
    handler = file_handlers[0]
    handler.flush()
    line = json.loads(path.read_text().splitlines()[-1])
    assert line["msg"] == "deposit 5" and line["level"] == "INFO"
    assert (line["request_id"], line["transfer_id"], line["audit_id"]) == ("r-1", "t-1", "a-1")
    assert line["wallet_id"] == "w"

    # Rotation: the file moves to .1 and logging continues in a fresh file.
    assert handler.maxBytes > 0 and handler.backupCount >= 1
    handler.doRollover()
    logging.getLogger("wallet.test").info("after rotation")
    handler.flush()
    assert (tmp_path / "wallet.log.1").exists()
    assert json.loads(path.read_text().splitlines()[-1])["msg"] == "after rotation"
