"""The start-up check: loopback or not, authenticated or not, and the warnings."""

from __future__ import annotations

import logging
from typing import TypedDict

import pytest

from wallet_platform.config import Settings, load_settings, parse_settings
from wallet_platform.server import exposure


@pytest.mark.parametrize(
    ("listen", "host", "loopback"),
    [
        ("127.0.0.1:50051", "127.0.0.1", True),
        ("127.8.9.10:1", "127.8.9.10", True),
        ("localhost:0", "localhost", True),
        ("LocalHost:0", "LocalHost", True),
        ("[::1]:50051", "::1", True),
        ("[::ffff:127.0.0.1]:1", "::ffff:127.0.0.1", True),
        ("0.0.0.0:50051", "0.0.0.0", False),
        ("[::]:50051", "::", False),
        (":50051", "", False),
        ("10.0.0.5:50051", "10.0.0.5", False),
        ("wallet.internal:50051", "wallet.internal", False),
        ("localhost.example.com:1", "localhost.example.com", False),
        ("128.0.0.1:1", "128.0.0.1", False),
        ("[::ffff:10.0.0.1]:1", "::ffff:10.0.0.1", False),
        # Unbracketed IPv6 is ambiguous: kept whole, and so never loopback.
        ("::1:8080", "::1:8080", False),
        ("unix:/tmp/wallet.sock", "unix", False),
    ],
)
def test_loopback_is_127_8_and_v6_loopback_and_localhost_only(listen, host, loopback):
    assert exposure.listen_host(listen) == host
    assert exposure.is_loopback(host) is loopback


def _settings(**changes) -> Settings:
    return Settings(listen="0.0.0.0:50051", **changes)


class MutualTls(TypedDict):
    """The settings of a server that asks its callers for a client certificate."""

    tls_cert: str
    tls_key: str
    tls_client_ca: str


MTLS: MutualTls = {"tls_cert": "server.crt", "tls_key": "server.key", "tls_client_ca": "ca.crt"}


def test_a_reachable_server_without_authentication_is_refused_with_the_fix_named():
    found = exposure.assess(_settings())
    assert found.refusal is not None and "\n" not in found.refusal
    for fix in ("WALLET_AUTH_TOKENS", "WALLET_TLS_CLIENT_CA", "WALLET_ALLOW_INSECURE=1"):
        assert fix in found.refusal
    assert "--allow-insecure" in found.refusal
    # TLS alone encrypts but authenticates nobody.
    tls_only = exposure.assess(_settings(tls_cert="server.crt", tls_key="server.key"))
    assert tls_only.refusal is not None
    # Tokens that parse to nothing are no authentication.
    assert exposure.assess(_settings(auth_tokens=" ; ")).refusal is not None


def test_enforce_exits_with_one_line_naming_the_process():
    with pytest.raises(SystemExit) as refused:
        exposure.enforce(_settings(), "fraud-worker")
    message = str(refused.value.code)
    assert message.startswith("fraud-worker: refusing to serve 0.0.0.0:50051")
    assert "\n" not in message


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:50051", "[::1]:0"])
def test_loopback_needs_nothing_and_warns_about_nothing(listen):
    assert exposure.assess(Settings(listen=listen)) == exposure.Exposure(None, ())


def test_allow_insecure_starts_with_a_loud_warning():
    found = exposure.assess(_settings(allow_insecure=True))
    assert found.refusal is None
    assert len(found.warnings) == 1 and found.warnings[0].startswith("INSECURE: serving")


def test_tokens_over_plaintext_on_a_reachable_address_warn():
    found = exposure.assess(_settings(auth_tokens="t=reader"))
    assert found.refusal is None
    assert len(found.warnings) == 1 and "plaintext" in found.warnings[0]
    # Not on loopback, and not with TLS.
    assert exposure.assess(Settings(listen="127.0.0.1:1", auth_tokens="t=reader")).warnings == ()
    with_tls = _settings(auth_tokens="t=reader", tls_cert="server.crt", tls_key="server.key")
    assert exposure.assess(with_tls).warnings == ()


def test_mtls_without_tokens_or_roles_starts_but_warns_that_certificates_authorise_everything():
    for listen in ("0.0.0.0:1", "127.0.0.1:1"):
        found = exposure.assess(Settings(listen=listen, **MTLS))
        assert found.refusal is None
        assert len(found.warnings) == 1
        assert "may call every RPC" in found.warnings[0]
    assert exposure.assess(_settings(tls_client_roles="svc=reader", **MTLS)).warnings == ()
    assert exposure.assess(_settings(auth_tokens="t=reader", **MTLS)).warnings == ()


def test_certificate_roles_need_mutual_tls_and_bad_specs_stop_the_process():
    with pytest.raises(SystemExit, match="needs mutual TLS"):
        exposure.assess(Settings(tls_client_roles="svc=reader"))
    with pytest.raises(SystemExit, match="unknown role"):
        exposure.assess(Settings(auth_tokens="t=root"))
    with pytest.raises(SystemExit, match="WALLET_TLS_CLIENT_ROLES"):
        exposure.assess(Settings(tls_client_roles="svc=reader[bad/prefix]", **MTLS))


def test_enforce_logs_each_warning(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="wallet_platform.server.exposure"):
        exposure.enforce(_settings(allow_insecure=True), "stack")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("stack: INSECURE: serving 0.0.0.0")
    assert caplog.records[0].levelno == logging.WARNING


def test_allow_insecure_is_an_env_var_and_a_flag_without_value():
    assert load_settings(environ={}).allow_insecure is False
    for raw in ("1", "true", "YES", "on"):
        assert load_settings(environ={"WALLET_ALLOW_INSECURE": raw}).allow_insecure is True
    for raw in ("0", "false", "no", "off", ""):
        assert load_settings(environ={"WALLET_ALLOW_INSECURE": raw}).allow_insecure is False
    with pytest.raises(SystemExit, match="is not 1 or 0"):
        load_settings(environ={"WALLET_ALLOW_INSECURE": "maybe"})
    assert parse_settings("x", ["--allow-insecure"]).allow_insecure is True
    assert parse_settings("x", []).allow_insecure is False
