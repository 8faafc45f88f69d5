"""walletctl's TLS, mutual TLS and bearer-token options against a secured stack.

The test makes its own small PKI (a CA, a server certificate for 127.0.0.1, a client
certificate) with ``cryptography``; the server requires a client certificate and a
token. Without the CA, the client certificate or a token the CLI is refused with the
documented exit codes; with them it works, and the audit trail names the caller.
"""

from __future__ import annotations

from pathlib import Path

from tests.eventually import eventually
from tests.integration.walletctl_harness import running_stack, walletctl
from tests.pki import CertificateAuthority
from walletctl import exitcodes


def make_pki(directory: Path) -> dict[str, str]:
    """CA, server (SAN 127.0.0.1) and client certificates as PEM files."""
    ca = CertificateAuthority(directory, "walletctl-test-ca")
    server = ca.issue("wallet-server", server=True)
    client = ca.issue("operator-7", server=False)
    return {
        "ca": ca.path,
        "server_cert": str(server.cert),
        "server_key": str(server.key),
        "client_cert": str(client.cert),
        "client_key": str(client.key),
    }


async def test_tls_mtls_and_tokens(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    async with running_stack(
        database_url,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
        tls_ca=pki["ca"],
        tls_client_cert=pki["client_cert"],
        tls_client_key=pki["client_key"],
        auth_tokens="t-read=reader@auditor;t-ops=admin@oncall",
    ) as running:
        target = running.target
        tls = ["--tls-ca", pki["ca"]]
        mtls = [
            *tls,
            "--tls-client-cert",
            pki["client_cert"],
            "--tls-client-key",
            pki["client_key"],
        ]
        create = [
            "wallets",
            "create",
            "--currency",
            "USD",
            "--wallet-id",
            "sec-1",
            "--timeout",
            "5",
        ]

        plaintext = await walletctl(*create, "--auth-token", "t-ops", target=target)
        assert plaintext.code == exitcodes.UNAVAILABLE
        no_client_cert = await walletctl(*tls, *create, "--auth-token", "t-ops", target=target)
        assert no_client_cert.code == exitcodes.UNAVAILABLE
        no_token = await walletctl(*mtls, *create, target=target)
        assert no_token.code == exitcodes.FAILED and "UNAUTHENTICATED" in no_token.err
        bad_token = await walletctl(*mtls, *create, "--auth-token", "guess", target=target)
        assert bad_token.code == exitcodes.FAILED and "UNAUTHENTICATED" in bad_token.err
        reader = await walletctl(*mtls, *create, "--auth-token", "t-read", target=target)
        assert reader.code == exitcodes.FAILED and "PERMISSION_DENIED" in reader.err

        # the right certificates and token, from the environment like the servers' clients
        env = {
            "WALLET_TARGET": target,
            "WALLET_TLS_CA": pki["ca"],
            "WALLET_TLS_CLIENT_CERT": pki["client_cert"],
            "WALLET_TLS_CLIENT_KEY": pki["client_key"],
            "WALLET_AUTH_TOKEN": "t-ops",
        }
        created = await walletctl(*create, "--json", env=env)
        assert created.code == exitcodes.OK, created
        assert created.json["wallet"]["wallet_id"] == "sec-1"
        shown = await walletctl("wallets", "show", "sec-1", "--auth-token", "t-read", env=env)
        assert shown.code == exitcodes.OK

        # the audit trail names who called (written in the background)
        async def callers() -> set[str]:
            audited = await walletctl(
                "audit", "--method", "CreateWallet", "--status", "OK", "--json",
                database_url=database_url,
            )  # fmt: skip
            return {r["caller"] for r in audited.json["records"]}

        named = await eventually(
            callers, what="the CreateWallet audit row", within=10, interval=0.1
        )
        assert len(named) == 1 and "oncall" in named.pop()
