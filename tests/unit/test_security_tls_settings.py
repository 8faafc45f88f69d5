"""Half-configured TLS refuses to start instead of silently serving plaintext."""

from __future__ import annotations

import pytest

from wallet_platform.channels import channel_credentials
from wallet_platform.config import Settings
from wallet_platform.server.builder import server_credentials


def test_plaintext_is_the_default():
    assert server_credentials(Settings()) is None
    assert channel_credentials(Settings()) is None


@pytest.mark.parametrize(
    "changes",
    [{"tls_key": "k.pem"}, {"tls_client_ca": "ca.pem"}, {"tls_cert": "c.pem"}],
)
def test_half_configured_server_tls_is_refused(changes):
    with pytest.raises(SystemExit):
        server_credentials(Settings(**changes))


def test_client_certificate_needs_its_key():
    with pytest.raises(ValueError):
        channel_credentials(Settings(tls_client_cert="c.pem"))
