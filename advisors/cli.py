"""``python -m advisors``: a merchant's advisors, groups, customers, settings, presence.

    python -m advisors --merchant acme advisor add --name 星野 --code 0123 \\
        --phone 090-1111-2222 --price 300
    python -m advisors --merchant acme advisor presence 1 online
    python -m advisors --merchant acme advisor retire 1
    python -m advisors --merchant acme group add --name タロット --member 1 --member 2
    python -m advisors --merchant acme customer add --account u-42 --number 08012345678
    python -m advisors --merchant acme settings set --after-call manual --lines 5
    python -m advisors --merchant acme settings set --click-to-call-first advisor
    python -m advisors --merchant acme events --since 0

Output is JSON. Input goes through the same parsers as the API (:mod:`advisors.schemas`),
so the rules and messages are the same; an error names the option at fault. Database:
``--database-url``, else ``DATABASE_URL``, else the embedded server (``cbgw_callback``,
the callback site's); the advisors migrations are applied on connect. Exit status: 0 ok,
2 bad input, 1 database unreachable or failing.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import advisors
from advisors import schemas as s
from advisors.events import since
from advisors.live import Presences
from advisors.model import Via
from advisors.store import AdvisorStore
from shared.api_cli import run_command
from shared.db import create_pool, migrate, package_migrations, resolve_url

#: API field -> the option that sets it
OPTIONS = {"display_name": "--name", "name_prompt": "--prompt", "code": "--code",
           "contact": "--phone/--sip", "contact.number": "--phone", "contact.user": "--sip",
           "price_per_minute_yen": "--price", "max_concurrent": "--max-concurrent",
           "groups": "--group", "members": "--member", "name": "--name",
           "account": "--account", "numbers": "--number", "after_call": "--after-call",
           "wrap_up_s": "--wrap-up-s", "ring_timeout_s": "--ring-timeout-s",
           "misses_before_break": "--misses-before-break", "lines": "--lines",
           "click_to_call_first": "--click-to-call-first",
           "presence": "presence", "reason": "--reason"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m advisors", description=__doc__.split("\n")[0])
    p.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL, else "
                                          "embedded)")
    p.add_argument("--merchant", required=True, help="the merchant id")
    nouns = p.add_subparsers(dest="noun", required=True)

    def advisor_options(a: argparse.ArgumentParser) -> None:
        a.add_argument("--name", dest="display_name")
        a.add_argument("--prompt", dest="name_prompt")
        a.add_argument("--code")
        contact = a.add_mutually_exclusive_group()
        contact.add_argument("--phone", help="a PSTN number, national or E.164")
        contact.add_argument("--sip", help="a SIP user reached through the edge trunk")
        a.add_argument("--price", dest="price_per_minute_yen", type=int, help="yen per minute")
        a.add_argument("--max-concurrent", type=int)
        a.add_argument("--group", dest="groups", type=int, action="append")

    def group_options(g: argparse.ArgumentParser) -> None:
        g.add_argument("--name")
        g.add_argument("--member", dest="members", type=int, action="append")
        g.add_argument("--price", dest="price_per_minute_yen", type=int,
                       help="yen per minute through the group (default: its dearest member's)")

    def customer_options(c: argparse.ArgumentParser) -> None:
        c.add_argument("--account")
        c.add_argument("--name")
        c.add_argument("--number", dest="numbers", action="append")

    adv = _collection(nouns, "advisor", advisor_options)
    pres = adv.add_parser("presence")
    pres.add_argument("id", type=int)
    pres.add_argument("presence", choices=s.PRESENCE_VALUES)
    pres.add_argument("--reason")
    adv.add_parser("retire", help="retire an advisor (DELETE /v1/advisors/{id})"
                   ).add_argument("id", type=int)
    _collection(nouns, "group", group_options)
    _collection(nouns, "customer", customer_options)

    st = nouns.add_parser("settings").add_subparsers(dest="verb", required=True)
    st.add_parser("show")
    ss = st.add_parser("set")
    for key, kind in s.SETTINGS_CHOICES.items():
        ss.add_argument("--" + key.replace("_", "-"), dest=key,
                        choices=[m.value for m in kind])
    for key in s.SETTINGS_LIMITS:
        ss.add_argument("--" + key.replace("_", "-"), dest=key, type=int)

    ev = nouns.add_parser("events", help="the merchant's presence events, oldest first")
    ev.add_argument("--since", type=int, default=0, help="after this event id")
    return p


def _collection(nouns: Any, noun: str, options: Callable[[argparse.ArgumentParser], None]
                ) -> Any:
    """``NOUN list``, ``NOUN add [options]``, ``NOUN set ID [options]``."""
    verbs = nouns.add_parser(noun).add_subparsers(dest="verb", required=True)
    verbs.add_parser("list")
    options(verbs.add_parser("add"))
    change = verbs.add_parser("set")
    change.add_argument("id", type=int)
    options(change)
    return verbs


def _fields(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The options given, as the API's JSON body."""
    data = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "phone", None) is not None:
        data["contact"] = {"kind": "pstn", "number": args.phone}
    if getattr(args, "sip", None) is not None:
        data["contact"] = {"kind": "sip", "user": args.sip}
    return data


async def run(args: argparse.Namespace) -> Any:
    url = await asyncio.to_thread(resolve_url, args.database_url, "cbgw_callback")
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, [package_migrations("advisors", advisors.__file__)])
        return await _command(args, AdvisorStore(pool), Presences(pool))
    finally:
        await pool.close()


async def _command(args: argparse.Namespace, store: AdvisorStore, live: Presences) -> Any:
    m, create = args.merchant, getattr(args, "verb", None) == "add"
    match args.noun, getattr(args, "verb", None):
        case "advisor", "list":
            return {"items": [s.advisor_json(a, p) for a, p in await store.advisors(m)]}
        case "advisor", "retire":
            await live.retire(m, args.id)
            return s.advisor_json(*await store.advisor(m, args.id))
        case "advisor", "presence":
            wanted = s.parse_presence(_fields(args, ("presence", "reason")))
            event = wanted.event(live.clock(), Via.API)
            return s.presence_json((await live.apply(m, args.id, event))[0])
        case "advisor", _:
            data = s.parse_advisor(_fields(args, s.ADVISOR_FIELDS), create=create)
            found = (await store.create_advisor(m, data) if create
                     else await store.update_advisor(m, args.id, data))
            return s.advisor_json(*found)
        case "group", "list":
            return {"items": [s.group_json(g) for g in await store.groups(m)]}
        case "group", _:
            group = s.parse_group(_fields(args, ("name", "members", "price_per_minute_yen")),
                                  create=create)
            return s.group_json(await store.create_group(m, group) if create
                                else await store.update_group(m, args.id, group))
        case "customer", "list":
            return {"items": [s.customer_json(c) for c in await store.customers(m)]}
        case "customer", _:
            customer = s.parse_customer(_fields(args, ("account", "name", "numbers")),
                                        create=create)
            return s.customer_json(await store.create_customer(m, customer) if create
                                   else await store.update_customer(m, args.id, customer))
        case "settings", "show":
            return s.settings_json(await store.rules(m))
        case "settings", _:
            rules = s.parse_settings(_fields(args, (*s.SETTINGS_CHOICES, *s.SETTINGS_LIMITS)),
                                     await store.rules(m))
            return s.settings_json(await store.set_rules(m, rules))
    return {"items": await since(store.pool, m, args.since)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(run(args), OPTIONS)
