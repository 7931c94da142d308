"""Advisors: the people customers pay to talk to (phone consultation, fortune telling).

Per merchant: advisors (a Japanese display name, a spoken-name prompt, a 4-digit code,
a PSTN number or a SIP endpoint, a price per minute in yen, how many consultations they
take at once), groups (what a customer chooses; a one-member group is a named advisor),
customers (an account with one or more phone numbers) and the merchant's settings
(after-call work, ring timeout, misses before an automatic break, lines).

Pure logic: :mod:`advisors.model` (value types), :mod:`advisors.presence` (one
advisor's state machine) and :mod:`advisors.assignment` (who gets a customer); input
rules in :mod:`advisors.schemas`. Adapters: :mod:`advisors.store` (the directory),
:mod:`advisors.live` (presence and assignment transactions; every state change an event
row, published by NOTIFY), :mod:`advisors.events` (LISTEN, fanned out to subscribers),
:mod:`advisors.http` and :mod:`advisors.resources` (admin API, the presence event
stream), :mod:`advisors.metrics` (``/metrics`` readings), :mod:`advisors.cli`.
Consultation records: :mod:`advisors.records` (the record, pure), :mod:`advisors.
record_schemas` (its JSON Schemas), :mod:`advisors.record_store` (stored once, with its
message to the edge; the same tables and code at the edge, which receives them).
This package imports only :mod:`shared`; the call wiring is not built yet (see
docs/CONTRACTS.md, Advisors).
"""
