"""The function ``billing_admit_and_hold`` (the newest billing migration that defines it)
runs :func:`billing.admission.admit_and_hold_sql` of ``HOLD_ASKS`` word for word: the
statement the integration property test holds equal to the admission then
``reserve_all`` is the one the batches run. A change to the Python statement (its
policies' fields, the terms' defaults, the ledger's balance reads) needs a migration
that replaces the function."""

from __future__ import annotations

import re
from pathlib import Path

import billing
from billing.admission import (
    ADMIT_AND_HOLD,
    ADMIT_AND_HOLD_FUNCTION,
    HOLD_ASKS,
    admit_and_hold_call,
    admit_and_hold_sql,
)

MIGRATIONS = Path(billing.__file__).parent / "migrations"


def _words(sql: str) -> str:
    return " ".join(sql.split())


def _newest_body() -> tuple[str, str]:
    """The newest migration defining the function, and its body's statements (between
    its ``BEGIN`` and ``END``: the accounts' lock, then the query it returns)."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        if re.search(rf"FUNCTION {ADMIT_AND_HOLD_FUNCTION}\(", text):
            found.append((path.name, text))
    assert found, f"no migration defines {ADMIT_AND_HOLD_FUNCTION}"
    name, text = found[-1]
    body = re.search(rf"FUNCTION {ADMIT_AND_HOLD_FUNCTION}\(.*?\bBEGIN\b(.*?)\bEND\s*\$\$;",
                     text, re.S)
    assert body is not None, name
    return name, body.group(1)


def test_the_function_locks_the_accounts_before_it_reads_them() -> None:
    """The admission's facts are read once, in the statement after the accounts' lock (in
    id order), not before it: what the holds are decided on is read under the lock."""
    statements = admit_and_hold_sql(HOLD_ASKS)
    lock, returned = statements.split("RETURN QUERY", 1)
    assert lock.strip().startswith("PERFORM 1 FROM billing_accounts")
    assert " ".join(lock.split()).endswith("ORDER BY acct.id FOR UPDATE;")
    assert "billing_entries" not in lock and "billing_live_holds" not in lock
    assert returned.count("billing_live_holds") == 1
    assert "billing_reserve_holds" not in returned and "billing_hold_locked_once(" in returned


def test_the_function_runs_the_python_statement_word_for_word() -> None:
    name, body = _newest_body()
    assert _words(body) == _words(admit_and_hold_sql(HOLD_ASKS)), (
        f"{name}'s billing_admit_and_hold differs from admit_and_hold_sql(HOLD_ASKS): "
        "write a migration that replaces the function")


def test_the_call_passes_the_asks_arrays_and_the_callers_accounts() -> None:
    assert f"{ADMIT_AND_HOLD_FUNCTION}($1::text[], $2::text[], $3::bigint[]" in ADMIT_AND_HOLD
    call = admit_and_hold_call("ARRAY(SELECT x FROM found ORDER BY n)")
    assert "($1::text[], ARRAY(SELECT x FROM found ORDER BY n), $3::bigint[]" in call
    assert call.endswith("ORDER BY n")
