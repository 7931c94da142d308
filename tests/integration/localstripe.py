"""localstripe as a real process for the billing tests, a StripeClient for it and a
customer with a card attached: ``localstripe = localstripe_fixture()`` in a test module."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from tests.integration.test_edge_app import free_port


def client_for(port: int) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_billing", base_addresses={
        "api": f"http://127.0.0.1:{port}"}, max_network_retries=0)


def localstripe_fixture() -> Any:
    @pytest.fixture(scope="module")
    def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
        """localstripe as a real process on a free port, from scratch: without
        ``--from-scratch`` it loads /tmp/localstripe.pickle, which every localstripe on
        the machine rewrites on each change (another run's objects, or a half-written
        file that stops it at start)."""
        exe = shutil.which("localstripe") or str(Path(sys.executable).parent / "localstripe")
        port = free_port()
        log = tmp_path_factory.mktemp("localstripe") / "stderr.log"
        with log.open("wb") as err:
            proc = subprocess.Popen([exe, "--port", str(port), "--from-scratch"],
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, f"localstripe exited at start: {log.read_text()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "localstripe did not listen in 20 s"
                    time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)

    return localstripe


def card(client: stripe.StripeClient, number: str, customer: str | None = None
         ) -> tuple[str, str]:
    """A customer (``customer``, else a new one) with this card attached: (customer id,
    payment method id)."""
    if customer is None:
        customer = str(client.v1.customers.create(
            params={"email": "member-42@example.com"}).id)
    method = client.v1.payment_methods.create(params={"type": "card", "card": {
        "number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}})
    client.v1.payment_methods.attach(method.id, params={"customer": customer})
    return customer, method.id


def intents_with(client: stripe.StripeClient, metadata_key: str, key: str) -> list[str]:
    return [i.id for i in client.v1.payment_intents.list(params={"limit": 100})
            .auto_paging_iter() if i.metadata and metadata_key in i.metadata
            and i.metadata[metadata_key] == key]
