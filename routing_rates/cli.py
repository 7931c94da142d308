"""``python -m routing_rates``: decks, quotes, decisions, CDR rating, reports.

Database: ``--database-url``, else ``DATABASE_URL``, else the embedded server
(database ``cbgw_callback``; ``--site edge`` for ``cbgw_edge``). The
routing_rates migrations are applied on connect. Exit status: 0 ok, 2 bad
input (file and line named on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from routing_rates import call_lengths, distribute, importer, report, simulate, store
from routing_rates.carriers import DATA_DIR, DEMO_CARRIERS, CarrierConfigError, load_carriers
from routing_rates.cdr import CdrFileError, CdrRater, DeckHistory, read_cdrs
from routing_rates.duration import DistributionError, DurationModel, load_distributions
from routing_rates.profile import ProfileError, load_profile
from routing_rates.quality import QualityBoard
from routing_rates.service import RatingService, UnknownTariff
from shared.config import ConfigError, Merchant, load, parse_merchants, root
from shared.db import create_pool, migrate, package_migrations, resolve_url
from shared.money import DEFAULT_FX_BASE, DEFAULT_FX_RATES, FxTable, MoneyError
from shared.phone import E164, InvalidNumber, normalise
from shared.timeutil import TimestampError, parse_timestamp

# Plivo's published outbound deck (public data, 72,554 rows), shipped gzipped so the
# demo works on a fresh clone.
PLIVO_DECK = Path(__file__).resolve().parent / "data" / "plivo-voice-outbound-2026-04-01.csv.gz"
#: the demo carriers' decks (``demo-setup``), tariff id -> file
DEMO_DECKS = (("carrier-a", PLIVO_DECK), ("carrier-b", DATA_DIR / "carrier-b.csv"),
              ("carrier-c", DATA_DIR / "carrier-c.csv"),
              ("ntt-freedial", DATA_DIR / "ntt-freedial.csv"))
DEFAULT_FX = ",".join(f"{code}={rate}" for code, rate in DEFAULT_FX_RATES.items())


class CliError(Exception):
    """Bad input: printed without a traceback, exit status 2."""


def _when(text: str | None, option: str) -> datetime | None:
    """An ISO date/time option; one without a zone is UTC."""
    if not text:
        return None
    try:
        return parse_timestamp(text, option, zoneless=UTC)
    except TimestampError as exc:
        raise CliError(str(exc)) from None


def _number(text: str) -> E164:
    try:
        return normalise(text)
    except InvalidNumber as exc:
        raise CliError(str(exc)) from exc


def _fx(args: argparse.Namespace) -> FxTable:
    spec = args.fx or os.environ.get("RATES_FX", DEFAULT_FX)
    try:
        pairs = dict(item.split("=", 1) for item in spec.replace(" ", "").split(",") if item)
        return FxTable.from_mapping(args.currency, pairs)
    except (ValueError, MoneyError) as exc:
        raise CliError(f"--fx {spec!r}: expected CUR=units-of-{args.currency},...: {exc}") \
            from exc


async def _connect(args: argparse.Namespace) -> asyncpg.Connection:
    database = "cbgw_edge" if args.site == "edge" else "cbgw_callback"
    url = await asyncio.to_thread(resolve_url, args.database_url, database)
    args.resolved_url = url
    conn = await asyncpg.connect(url)
    sets = [store.migrations()]
    if getattr(args, "distribute", False):  # the callback site's database: the link's outbox
        import shared

        sets.insert(0, package_migrations("link", shared.__file__))
    await migrate(conn, sets)
    return conn


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


# -- commands ------------------------------------------------------------------------

async def cmd_carriers(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    if args.action == "load":
        carriers = load_carriers(Path(args.file))
        await store.upsert_tariffs(conn, carriers)
        print(f"loaded {len(carriers)}: {', '.join(c.id for c in carriers)}")
        return
    carriers = await store.load_tariffs(conn)
    _print(args, [c.to_json() for c in carriers], "\n".join(
        f"{c.id:<16} {c.kind:<8} {'on ' if c.enabled else 'off'} {c.currency} "
        f"{c.timezone:<20} ch={c.max_channels} {c.dial_string}" for c in carriers))


def _deck_distribution(args: argparse.Namespace, option: str) -> distribute.Distribution | None:
    """When distributing (the callback site's default): the lead of ``--lead-s``, else
    ``[rates] distribution_lead_s`` of ``--config``, else the default."""
    if not args.distribute:
        return None
    lead = args.lead_s
    if lead is None and args.config:
        from shared.site import RatesSettings

        top = root(load(Path(args.config), args.site.upper()))
        lead = RatesSettings.parse(top.section("rates")).distribution_lead_s
    distribution = distribute.Distribution(distribute.DEFAULT_LEAD_S if lead is None else lead)
    when = _when(getattr(args, option.removeprefix("--")), option)
    if when is not None:
        try:
            distribution.check(when, datetime.now(UTC))
        except distribute.DistributionRefused as exc:
            raise CliError(f"{option}: {exc}") from None
    return distribution


async def cmd_import(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    profile = load_profile(args.profile) if args.profile else None
    result = await importer.import_deck(
        conn, args.tariff, Path(args.file), profile, effective=_when(args.effective, "--effective"),
        stage=args.stage, dry_run=args.dry_run, progress=not args.no_progress and not args.json,
        allow_shrink=args.allow_shrink, distribution=_deck_distribution(args, "--effective"))
    for gap in result.gaps:   # on stderr, like the shrink warning
        print(f"WARNING: {result.tariff_id}: {gap.describe()}", file=sys.stderr)
    shrink = result.shrink
    if shrink is not None:  # on stderr, so that --json output shows it too
        print(f"WARNING: this deck {shrink.describe()}"
              + ("; importing it needs --allow-shrink" if result.deck is None else ""),
              file=sys.stderr)
    if result.diff is not None:
        d = result.diff
        lines = [f"dry run: {result.rows} rows ({result.duplicates} duplicate lines dropped), "
                 f"nothing changed", f"against deck {d.against_deck}: +{d.added} added, "
                 f"-{d.removed} removed, {d.up} up, {d.down} down, "
                 f"{d.other_changes} other term changes, {d.unchanged} unchanged"]
        lines += [f"  {m.prefix:<12} {m.destination[:28]:<28} {m.old} -> {m.new} "
                  f"({m.delta:+}) {m.currency}/min" for m in d.moves]
        lines += [f"  + {m.prefix:<10} {m.destination[:28]:<28} {m.new}"
                  for m in d.added_sample[:10]]
        lines += [f"  - {m.prefix:<10} {m.destination[:28]:<28} {m.old}"
                  for m in d.removed_sample[:10]]
        _print(args, {"dry_run": True, "rows": result.rows, "diff": d.to_json(),
                      "shrink": shrink.to_json() if shrink else None,
                      "gaps": [g.to_json() for g in result.gaps]}, "\n".join(lines))
        return
    assert result.deck is not None
    deck = result.deck
    _print(args, {"deck": deck.to_json(), "seconds": str(result.seconds),
                  "shrink": shrink.to_json() if shrink else None,
                  "gaps": [g.to_json() for g in result.gaps]},
           f"deck {deck.id} of {deck.tariff_id}: {result.rows} rows "
           f"({result.duplicates} duplicate lines dropped) in {result.seconds} s; "
           + (f"in force from {deck.effective_from.isoformat()}" if deck.effective_from
              else f"staged (activate with: decks activate {deck.id})")
           + ("; sent to the edge" if args.distribute and deck.effective_from else ""))


async def cmd_decks(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    if args.action == "activate":
        distribution = _deck_distribution(args, "--at")
        at = _when(args.at, "--at")
        deck = await (store.schedule(conn, args.deck_id, at) if distribution is None else
                      distribute.activate(conn, args.deck_id, at, distribution))
        print(f"deck {deck.id} of {deck.tariff_id} in force from "
              f"{deck.effective_from.isoformat() if deck.effective_from else '?'}"
              + ("; sent to the edge" if distribution else ""))
        return
    if args.action == "cancel":
        deck = await distribute.cancel(conn, args.deck_id)
        print(f"deck {deck.id} cancelled"
              + ("; withdrawn at the edge too" if deck.content_sha256 else ""))
        return
    decks = await store.list_decks(conn, args.tariff)
    in_force = {t: d.id for t, d in (await store.decks_in_force(conn, now)).items()}
    if args.action == "history":
        decks = [d for d in decks if d.state == "scheduled"]
    out, lines = [], []
    for i, d in enumerate(decks):
        status = d.status(now, in_force.get(d.tariff_id))
        until = next((n.effective_from for n in decks[i + 1:] if n.tariff_id == d.tariff_id
                      and n.state == "scheduled"), None) if d.state == "scheduled" else None
        out.append(d.to_json() | {"status": status,
                                  "until": until.isoformat() if until else None})
        origin = f"link v{d.origin_version}" if d.origin == "link" else d.origin
        lines.append(f"{d.id:>5} {d.tariff_id:<14} {status:<10} "
                     f"{d.effective_from.isoformat() if d.effective_from else '-':<32} "
                     f"{'until ' + until.isoformat() if until else '':<38} "
                     f"{d.row_count:>8} rows  {origin:<12} {d.source}")
    _print(args, out, "\n".join(lines) or "no decks")


async def _distribution(args: argparse.Namespace, conn: asyncpg.Connection,
                        rates: RatingService) -> DurationModel | None:
    """The distribution asked for; None: the merchant's (``decide --merchant``)."""
    if args.duration is not None:
        return DurationModel.fixed(Decimal(args.duration))
    name = args.distribution
    if name is None:
        if getattr(args, "merchant", None):
            return None
        name = "default"
    if name.startswith("learned"):
        merchant = name.partition(":")[2] or None
        rows = await conn.fetch(
            "SELECT duration_s FROM rates_cdr_ratings WHERE leg = 'customer' AND duration_s > 0 "
            "AND ($1::text IS NULL OR merchant_id = $1) ORDER BY started_at DESC LIMIT 20000",
            merchant)
        if not rows:
            raise CliError("no rated customer legs to learn a distribution from "
                           "(run rate-cdrs first)")
        return DurationModel.from_samples(name, [r["duration_s"] for r in rows], bucket_s=5)
    try:
        return rates.distribution(name)
    except LookupError as exc:
        raise CliError(str(exc)) from exc


async def _service(args: argparse.Namespace) -> RatingService:
    extra: dict[str, DurationModel] = {}
    if args.distributions:
        text = await asyncio.to_thread(Path(args.distributions).read_text)
        extra = load_distributions(text, args.distributions)
    lengths = await asyncio.to_thread(_merchant_lengths, args)
    pool = await create_pool(args.resolved_url, min_size=1, max_size=2)
    service = await RatingService.start(pool, fx=_fx(args), distributions=extra,
                                        lengths=lengths, listen=False)
    service.owned_pool = pool  # type: ignore[attr-defined]
    return service


def _merchant_lengths(args: argparse.Namespace) -> call_lengths.MerchantLengths:
    """The merchants' configured call lengths and ``[rates] learn_*`` of ``--config``
    (the site's TOML), as the servers read them; without it, the defaults."""
    path = getattr(args, "config", None)
    if path is None:
        return call_lengths.MerchantLengths()
    from shared.site import RatesSettings

    top = root(load(Path(path), args.site.upper()))
    rates = RatesSettings.parse(top.section("rates"))
    return call_lengths.from_merchants(parse_merchants(top), rates.learning())


def _merchant(args: argparse.Namespace) -> Merchant | None:
    """``--merchant`` as ``--config`` configures it; None without either."""
    if args.merchant is None or getattr(args, "config", None) is None:
        return None
    merchants = {m.id: m for m in parse_merchants(root(load(Path(args.config),
                                                               args.site.upper())))}
    if args.merchant not in merchants:
        raise CliError(f"{args.config}: no merchant {args.merchant!r}")
    return merchants[args.merchant]


async def _quality(rates: RatingService, merchant: Merchant | None) -> None:
    """The carriers' figures from this database's CDRs (the callback site's), for the
    merchant's floor; none in a database without CDRs (the edge's)."""
    if merchant is None or merchant.carrier_quality is None:
        return
    board = QualityBoard(rates.owned_pool)  # type: ignore[attr-defined]
    try:
        await board.refresh()
    except asyncpg.UndefinedTableError:
        print("carrier quality unknown: no CDRs in this database (the callback site's "
              "has them)", file=sys.stderr)
        return
    rates.quality_board = board


async def cmd_quote(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    rates = await _service(args)
    try:
        number, at = _number(args.number), _when(args.at, "--at") or datetime.now(UTC)
        model = await _distribution(args, conn, rates)
        origin = _number(args.origin) if args.origin else None
        merchant = await asyncio.to_thread(_merchant, args)
        await _quality(rates, merchant)
        max_rate = merchant.max_cost_per_minute if merchant else None
        quality = merchant.carrier_quality if merchant else None
        if args.command == "quote":
            model = model or rates.distribution("default")
            routes, dropped = rates.quote(number, at, duration=model, origin=origin,
                                          max_rate=max_rate, quality=quality)
            lines = [f"{number} at {at.isoformat()}, durations {model.name} "
                     f"(mean {model.mean:.0f} s), costs in {rates.currency}"]
            lines += [f" {i}. {q.carrier_id:<12} {q.prefix:<10} {q.destination[:24]:<24} "
                      f"{q.row.terms.describe():<30} E[cost] {q.explain['expected_native']} "
                      f"{q.native_cost.currency} = {q.explain['expected']} {rates.currency}  "
                      f"{q.endpoint}" + (f"\n    {q.gap.describe()}" if q.gap else "")
                      + (f"\n    demoted: {q.demoted}" if q.demoted else "")
                      for i, q in enumerate(routes, 1)]
            lines += [f"    dropped {d.carrier_id}: {d.reason} {d.detail}" for d in dropped]
            _print(args, {"number": str(number), "routes": [q.explain for q in routes],
                          "dropped": [d.__dict__ if hasattr(d, "__dict__") else
                                      {"carrier": d.carrier_id, "reason": d.reason}
                                      for d in dropped]}, "\n".join(lines))
            return
        decision = rates.decide(number, at, inbound_tariff=args.inbound_tariff,
                                announce_mode=args.announce_mode,
                                announce_s=Decimal(args.announce_s), duration=model,
                                merchant=args.merchant, origin=origin,
                                max_rate=max_rate, quality=quality)
        _print(args, decision.to_json(), _explain_text(decision.to_json()))
    finally:
        await rates.close()
        await rates.owned_pool.close()  # type: ignore[attr-defined]


def _explain_text(d: dict[str, Any]) -> str:
    e = d["explain"]
    cur = e["currency"]
    verdict = "CALL BACK" if d["callback"] else "KEEP THE CALL"
    lines = [f"{verdict} ({d['reason']}) for {e['number']} at {e['at']}",
             f"rule: {e['rule']}",
             f"durations: {e['distribution']['name']} (mean {e['distribution']['mean_s']} s): "
             f"{e['distribution']['detail']}"]
    direct = e.get("direct") or {}
    if "expected" in direct:
        lines.append(f"direct:   {direct['tariff']} deck {direct['deck_id']} prefix "
                     f"{direct['prefix']} ({direct['terms']}): E = {direct['expected']} {cur}")
    else:
        lines.append(f"direct:   {direct.get('tariff')}: {direct.get('error')}")
    if e.get("edge_leg"):
        lines.append(f"edge leg: {e['edge_leg']['mode']}, {e['edge_leg']['seconds']} s billed: "
                     f"{e['edge_leg']['cost']} {cur} ({e['edge_leg']['why']})")
    if e.get("callback"):
        cb = e["callback"]
        lines.append(f"callback: {cb['carrier']} {cb['carrier_leg']} + edge {cb['edge_leg']} = "
                     f"{cb['total']} {cur}; saving {e['saving']} {cur}")
    for alt in e["alternatives"]:
        lines.append(f"  option {alt['carrier']:<12} prefix {alt['prefix']:<10} "
                     f"{alt['terms']:<30} E = {alt['expected']} {cur}")
        if "gap" in alt:
            lines.append(f"    {alt['gap']['detail']}")
        if "demoted" in alt:
            lines.append(f"    demoted: {alt['demoted']}")
    for drop in e["dropped"]:
        lines.append(f"  dropped {drop['carrier']}: {drop['reason']} {drop['detail']}")
    return "\n".join(lines)


async def cmd_rate_cdrs(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    cdrs = list(read_cdrs(Path(args.file), args.inbound_tariff))
    history = DeckHistory(await store.history(conn))
    rows = await store.rows_by_deck(conn, sorted(history.decks_for(cdrs)))
    carriers = {c.id: c for c in await store.load_tariffs(conn)}
    rater = CdrRater(carriers, history, rows.__getitem__, _fx(args))
    rated = rater.rate_all(cdrs)
    async with conn.transaction():
        await store.save_ratings(conn, rated)
    problems = [r for r in rated if r.problem]
    cost = sum((r.cost_base for r in rated), Decimal(0))
    direct = sum((r.direct_base or Decimal(0) for r in rated), Decimal(0))
    for r in problems:
        print(f"{args.file}: {r.cdr.call_id}/{r.cdr.leg}: {r.problem}", file=sys.stderr)
    _print(args, {"legs": len(rated), "unrated": len(problems), "cost": str(cost),
                  "toll_free": str(direct), "currency": rater.currency},
           f"rated {len(rated) - len(problems)} of {len(rated)} legs: cost {cost:.2f} "
           f"{rater.currency}, toll-free counterfactual {direct:.2f}, saving "
           f"{direct - cost:.2f}")


async def cmd_report(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    end = _when(args.to, "--to") or datetime.now(UTC)
    start = _when(args.since, "--since") or end - timedelta(days=30)
    rep = await report.savings(conn, start, end, args.merchant)
    if args.png:
        report.chart(rep, Path(args.png))
    lines = [f"{d.day}  {d.calls:>6} calls  actual {d.actual:>12.2f}  toll-free "
             f"{d.toll_free:>12.2f}  saving {d.saving:>12.2f}" for d in rep.days]
    lines.append(f"total: actual {rep.actual:.2f} {rep.currency}, all toll-free "
                 f"{rep.toll_free:.2f}, saving {rep.saving:.2f}; unrated legs {rep.unrated}"
                 + (f"; chart {args.png}" if args.png else ""))
    _print(args, rep.to_json(), "\n".join(lines))


async def cmd_simulate(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    log = await asyncio.to_thread(simulate.read_calls, Path(args.file))
    rates = await _service(args)
    try:
        started = time.perf_counter()
        result = simulate.simulate(rates, log, merchant=args.merchant,
                                   inbound_tariff=args.inbound_tariff,
                                   announce_mode=args.announce_mode,
                                   announce_s=Decimal(args.announce_s), worst=args.worst)
        took = time.perf_counter() - started
    finally:
        await rates.close()
        await rates.owned_pool.close()  # type: ignore[attr-defined]
    if args.png:
        simulate.chart(result, Path(args.png))
    if args.csv:
        simulate.write_csv(result, Path(args.csv))
    cur = result.currency
    lines = [f"{result.calls:,} calls replayed in {took:.2f} s against the decks in force "
             f"(costs in {cur})",
             f"  keep every call (toll-free): {result.keep:>14.2f}",
             f"  call every call back:        {result.callback:>14.2f}",
             f"  as the project decides:      {result.project:>14.2f}   saving "
             f"{result.saving:.2f} against keeping every call",
             f"  regret: {result.regret:.2f} over {result.regret_calls:,} calls decided alike "
             "whose other choice was cheaper in total",
             f"  hindsight: {result.hindsight:.2f} over {result.hindsight_calls:,} calls "
             "each cheaper the other way for its own talk time"]
    lines += [f"  {cls:<7} {calls:>8,} calls  saving {keep - project:>12.2f}"
              for cls, (calls, keep, project) in result.by_class.items() if calls]
    lines += [f"  hour {h:02d} {calls:>8,} calls  saving {keep - project:>12.2f}"
              for h, (calls, keep, project) in enumerate(result.by_hour) if calls]
    lines += [f"  lost {amount:.2f} on {log.at(i).isoformat()} {log.callers[i]} "
              f"{int(log.talk_s[i])} s" for i, amount in result.worst]
    data = {"calls": result.calls, "currency": cur, "keep": str(result.keep),
            "callback": str(result.callback), "project": str(result.project),
            "regret": str(result.regret), "regret_calls": result.regret_calls,
            "hindsight": str(result.hindsight), "hindsight_calls": result.hindsight_calls}
    _print(args, data, "\n".join(lines))


async def cmd_demo_setup(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
    for tariff, path in DEMO_DECKS:
        result = await importer.import_deck(conn, tariff, path, progress=False)
        print(f"{tariff}: deck {result.deck.id if result.deck else '?'}, {result.rows} rows")


COMMANDS: dict[str, Callable[[argparse.Namespace, asyncpg.Connection], Awaitable[None]]] = {
    "carriers": cmd_carriers, "import": cmd_import, "decks": cmd_decks, "quote": cmd_quote,
    "decide": cmd_quote, "rate-cdrs": cmd_rate_cdrs, "report": cmd_report,
    "simulate": cmd_simulate,
    "demo-setup": cmd_demo_setup,
}


def _decision_options(p: argparse.ArgumentParser) -> None:
    """What ``decide`` and ``simulate`` decide with."""
    p.add_argument("--inbound-tariff", default="ntt-freedial")
    p.add_argument("--announce-mode", choices=("early_media", "answer"), default="early_media")
    p.add_argument("--announce-s", default="5")
    p.add_argument("--merchant", help="assume this merchant's call lengths: learned from its "
                                      "calls, configured, or the default")
    p.add_argument("--config", help="the site's TOML: the merchants' [merchants.call_lengths] "
                                    "and [rates] learn_*")


def _distribution_options(p: argparse.ArgumentParser) -> None:
    """How an activation on the callback site reaches the edge."""
    p.add_argument("--distribute", action=argparse.BooleanOptionalAction, default=None,
                   help="send the activated version to the edge over the link, in the "
                        "activation's transaction (default effective time: now + the lead; "
                        "an earlier one is refused). The default on the callback site (--site "
                        "callback, the default); --no-distribute for a site without an edge")
    p.add_argument("--lead-s", type=int, help="the least time from activation to effective "
                   "time with --distribute (default [rates] distribution_lead_s of --config, "
                   f"else {distribute.DEFAULT_LEAD_S})")
    p.add_argument("--config", help="the callback site's TOML ([rates] distribution_lead_s)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m routing_rates", description=__doc__.split("\n")[0])
    p.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL, else embedded)")
    p.add_argument("--site", choices=("callback", "edge"), default="callback")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--currency", default=DEFAULT_FX_BASE, help="comparison currency (FX base)")
    p.add_argument("--fx", help=f"rates into the base, e.g. USD=155,EUR=160 (env RATES_FX; "
                                f"default {DEFAULT_FX})")
    p.add_argument("--distributions", help="TOML with [distributions.NAME] tables")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("carriers", help="load or list carriers and inbound tariffs")
    c.add_argument("action", choices=("load", "list"))
    c.add_argument("file", nargs="?", default=str(DEMO_CARRIERS))
    i = sub.add_parser("import", help="import a deck file for a carrier or inbound tariff")
    i.add_argument("tariff")
    i.add_argument("file")
    i.add_argument("--profile", help="profile name or TOML path (default: the carrier's)")
    i.add_argument("--effective", help="in force from (ISO; default now)")
    i.add_argument("--stage", action="store_true", help="import but do not schedule")
    i.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    i.add_argument("--allow-shrink", action="store_true",
                   help="import a deck that removes more than half of the rows in force")
    i.add_argument("--no-progress", action="store_true")
    _distribution_options(i)
    d = sub.add_parser("decks", help="list | activate ID | cancel ID | history")
    d.add_argument("action", choices=("list", "activate", "cancel", "history"))
    d.add_argument("deck_id", nargs="?", type=int)
    d.add_argument("--tariff")
    d.add_argument("--at", help="activate: in force from (ISO; default now, or the earliest "
                                "the lead allows when distributing)")
    _distribution_options(d)
    for name in ("quote", "decide"):
        q = sub.add_parser(name, help=f"{name} a number (national or +E.164)")
        q.add_argument("number")
        group = q.add_mutually_exclusive_group()
        group.add_argument("--duration", help="a fixed call length in seconds")
        group.add_argument("--distribution",
                           help="default | short | long | learned[:MERCHANT] | configured "
                                "name (default: the merchant's with --merchant, else default)")
        q.add_argument("--at", help="call time (ISO; default now)")
        q.add_argument("--origin", help="calling number, for origin-specific rates")
        if name == "decide":
            _decision_options(q)
        else:
            q.add_argument("--inbound-tariff", default="ntt-freedial")
            q.add_argument("--merchant", help="as for this merchant of --config: no carrier "
                                              "above its max_cost_per_minute, those below "
                                              "its carrier_quality floor last")
            q.add_argument("--config", help="the site's TOML (the merchants)")
    r = sub.add_parser("rate-cdrs", help="rate a CDR file (.jsonl or .csv) into the database")
    r.add_argument("file")
    r.add_argument("--inbound-tariff", default="ntt-freedial")
    rep = sub.add_parser("report", help="savings against all toll-free, with a PNG chart")
    rep.add_argument("--from", dest="since", help="start (ISO; default 30 days before --to)")
    rep.add_argument("--to", help="end (ISO; default now)")
    rep.add_argument("--merchant")
    rep.add_argument("--png", help="write the chart here")
    sim = sub.add_parser("simulate", help="replay a call log (CSV: time, caller, talk_s): "
                                          "keep all, call back all, as decided, regret")
    sim.add_argument("file")
    _decision_options(sim)
    sim.add_argument("--worst", type=int, default=10, help="list the N calls lost most on")
    sim.add_argument("--png", help="write the chart here")
    sim.add_argument("--csv", help="write savings by class and hour here")
    sub.add_parser("demo-setup", help="load the demo carriers and import their decks")
    return p


def _resolve_distribute(args: argparse.Namespace) -> None:
    """The callback site owns the decks: an import or activation there goes to the edge
    unless ``--no-distribute``; the edge never sends one."""
    if not hasattr(args, "distribute"):
        return
    activates = args.command == "import" or args.action == "activate"
    if args.distribute and (args.site == "edge" or not activates):
        raise CliError("--distribute: only an import or activation on the callback site "
                       "sends a deck to the edge")
    if args.distribute is None:
        args.distribute = activates and args.site == "callback"


async def run(args: argparse.Namespace) -> None:
    if args.command == "decks" and args.action in ("activate", "cancel") and args.deck_id is None:
        raise CliError(f"decks {args.action} needs a deck id")
    _resolve_distribute(args)
    conn = await _connect(args)
    try:
        await COMMANDS[args.command](args, conn)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        asyncio.run(run(args))
    except importer.DeckImportError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (CliError, importer.ImportRefused, ProfileError, CarrierConfigError, CdrFileError,
            ConfigError, simulate.SimulationError, DistributionError, UnknownTariff,
            store.DeckStateError, MoneyError, distribute.DistributionRefused,
            FileNotFoundError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        print(f"error: database ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    return 0
