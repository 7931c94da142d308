"""An operator's control of a consultation in progress, from the API to the process that
runs the call.

``POST /v1/consultations/{consultation_id}/end`` (and ``/hold``, ``/unhold``; the
merchant's bearer token) checks in
the database that the consultation's call-back is the merchant's and is being dialled
(``callback_requests.status = 'dialing'``) and that no record of the consultation was
saved (a saved record: it is over), then sends ``NOTIFY consult_control`` with the
request. Every worker process of the site LISTENs on that channel
(:func:`deliver_controls`); the one running the call-back's round
(``Worker.calls``) hands it to its :class:`~callback_server.call_runner.CallRunner`,
which feeds the consult machine: ``end`` (``consult.ForceEnd``): the advisor leg is hung
up, the customer hears the ``forced-end`` prompt and is hung up, and the record says
``forced_end``; ``hold`` (``HoldCustomer``): the customer leaves the bridge for music on
hold; ``unhold`` (``ResumeCustomer``): back into the bridge (each hold in the record's
``holds``); ``transfer`` (``StartTransfer``, body ``{"advisor_id"}`` or ``{"number"}``,
exactly one; an advisor of another merchant: 404): the customer held, the second party
rung and, answering, bridged with the first advisor; ``transfer/complete``
(``CompleteTransfer``): the customer to the second party, the first advisor hung up;
``transfer/cancel`` (``CancelTransfer``): the second party hung up, the customer back
(each transfer in the record's ``transfers``). A process not running it ignores the
notification.

A transfer to a number is screened by the toll-fraud guard first (block and allow
lists, the destination policy, a locked number: ``Guard.screen_transfer``): refused, 403
``number-refused`` with ``field`` ``number`` and the guard's ``reason`` (recorded at stage
``transfer`` and alerted), and nothing is asked of the call; its leg is screened again,
with the caps, at its originate.

Replies: 202 ``{"consultation_id", "action", "state": "requested"}``; 404 ``not-found``
(no such call-back of this merchant), 409 ``consultation-not-running`` (its call-back is
not being dialled, or the consultation is over), 400 ``invalid-field`` (not a
consultation id), 503 ``database-unavailable``. The machine ignores a control that does
not apply in its phase (an end is applied at any phase: the search stops), a hold of a
customer on hold or an unhold of one not on hold changes nothing. A hold is refused
before it is sent when nobody talks yet: 409 ``consultation-not-talking`` while the
consultation has no ``consult_live`` row with an answer (still assigning, ringing or
queued; an advisor-first click-to-call whose customer has not answered), as an ACD
refuses to hold a call that is not connected (applying it later would put a customer
on hold the moment they reach an advisor).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol, assert_never

import asyncpg
from aiohttp import web

from advisors.errors import NotFound
from advisors.records import MAX_INT
from callback_server import consult
from callback_server.call_ports import utcnow
from callback_server.guard.service import Guard
from shared.http import (
    ApiError,
    InvalidField,
    ServiceUnavailable,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    read_json_object,
)
from shared.openapi import MERCHANT, Operation, Param, Reply, Schema, add_operations
from shared.phone import E164, InvalidNumber

log = logging.getLogger("callback.consult")

CONTROL_CHANNEL = "consult_control"
#: a consultation of a call-back round: ``<callback_id>-c<n>`` (``ConsultRunner``)
CONSULTATION_ID = re.compile(
    r"\A(?P<callback>[A-Za-z0-9][A-Za-z0-9._:-]{0,119})-c[1-9][0-9]{0,5}\Z")


class Action(enum.StrEnum):
    END = "end"
    HOLD = "hold"
    UNHOLD = "unhold"
    TRANSFER = "transfer"
    TRANSFER_COMPLETE = "transfer-complete"
    TRANSFER_CANCEL = "transfer-cancel"

    @property
    def path(self) -> str:
        """The route's last segments (``transfer/complete``)."""
        return self.value.replace("-", "/")


@dataclass(frozen=True, slots=True)
class Control:
    """What an operator asks of a running consultation (the NOTIFY payload); a transfer
    names its second party (``to_advisor_id`` or ``to_number``)."""

    consultation_id: str
    action: Action
    to_advisor_id: int | None = None
    to_number: str | None = None

    def event(self, at: datetime) -> consult.Operator:
        """The consult machine's event for this control."""
        match self.action:
            case Action.END:
                return consult.ForceEnd(at)
            case Action.HOLD:
                return consult.HoldCustomer(at)
            case Action.UNHOLD:
                return consult.ResumeCustomer(at)
            case Action.TRANSFER:
                return consult.StartTransfer(at, self.to_advisor_id, self.to_number)
            case Action.TRANSFER_COMPLETE:
                return consult.CompleteTransfer(at)
            case Action.TRANSFER_CANCEL:
                return consult.CancelTransfer(at)
            case _:
                assert_never(self.action)

    @property
    def callback_id(self) -> str:
        match = CONSULTATION_ID.match(self.consultation_id)
        assert match is not None
        return match["callback"]

    def payload(self) -> str:
        return json.dumps({"consultation_id": self.consultation_id, "action": self.action,
                           "to_advisor_id": self.to_advisor_id, "to_number": self.to_number})

    @classmethod
    def parse(cls, payload: str) -> Control | None:
        """The control a payload carries; None for anything else."""
        try:
            data = json.loads(payload)
            control = cls(data["consultation_id"], Action(data["action"]),
                          data.get("to_advisor_id"), data.get("to_number"))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(control.consultation_id, str) \
                or not CONSULTATION_ID.match(control.consultation_id) \
                or not isinstance(control.to_advisor_id, int | None) \
                or not isinstance(control.to_number, str | None):
            return None
        return control


class NotRunning(ApiError):
    def __init__(self, consultation_id: str) -> None:
        super().__init__(409, "consultation-not-running",
                         f"consultation {consultation_id} is not in progress",
                         consultation_id=consultation_id)


class NotTalking(ApiError):
    def __init__(self, consultation_id: str) -> None:
        super().__init__(409, "consultation-not-talking",
                         f"consultation {consultation_id} has nobody talking to hold yet "
                         "(still ringing or queued)", consultation_id=consultation_id)


async def request_control(pool: asyncpg.Pool, merchant_id: str, control: Control) -> None:
    """Check that the consultation may be running, then notify every worker process."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM callback_requests WHERE callback_id = $1 AND merchant_id = $2",
            control.callback_id, merchant_id)
        if status is None:
            raise NotFound("consultation", control.consultation_id)
        recorded = await conn.fetchval(
            "SELECT true FROM consultations WHERE consultation_id = $1",
            control.consultation_id)
        if status != "dialing" or recorded:
            raise NotRunning(control.consultation_id)
        if control.action is Action.HOLD and not await conn.fetchval(
                "SELECT true FROM consult_live WHERE consultation_id = $1"
                " AND snapshot->>'answered_at' IS NOT NULL", control.consultation_id):
            raise NotTalking(control.consultation_id)
        if control.to_advisor_id is not None and not await conn.fetchval(
                "SELECT true FROM advisors WHERE id = $1 AND merchant_id = $2"
                " AND retired_at IS NULL",
                control.to_advisor_id, merchant_id):
            raise NotFound("advisor", str(control.to_advisor_id))
        await conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, control.payload())


class Controlled(Protocol):
    """A running round (``CallRunner``) as far as an operator's control goes."""

    def operator(self, consultation_id: str, event: consult.Operator) -> bool: ...


async def deliver_controls(notes: asyncio.Queue[str],
                           calls: Mapping[str, Controlled]) -> None:
    """Hand each control notified to the round of this process it is for (forever)."""
    while True:
        control = Control.parse(await notes.get())
        if control is None:
            continue
        runner = calls.get(control.callback_id)
        if runner is not None and runner.operator(control.consultation_id,
                                                  control.event(utcnow())):
            log.info("consultation %s: %s requested", control.consultation_id, control.action)


# --- HTTP -----------------------------------------------------------------------------------

PoolOf = Callable[[web.Application], asyncpg.Pool]
POOL_OF_KEY: web.AppKey[PoolOf] = web.AppKey("consult_control_pool")
#: the site's toll-fraud guard (None: a site without one)
GuardOf = Callable[[web.Application], Guard | None]
GUARD_OF_KEY: web.AppKey[GuardOf] = web.AppKey("consult_control_guard")


def install(app: web.Application, pool: PoolOf, guard: GuardOf = lambda _app: None) -> None:
    app[POOL_OF_KEY] = pool
    app[GUARD_OF_KEY] = guard
    add_operations(app, OPERATIONS)


#: who asks, for which merchant (401/403 otherwise)
MerchantOf = Callable[[web.Request], Awaitable[str]]


async def bearer_merchant(request: web.Request) -> str:
    return authenticated_merchant(request)


def controlling(action: Action, merchant_of: MerchantOf = bearer_merchant
                ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of ``POST /v1/consultations/{consultation_id}/<action>`` (the
    merchant's token), or of the operator page's route for it (``merchant_of``: the
    operator's session)."""

    async def control_consultation(request: web.Request) -> web.Response:
        merchant_id = await merchant_of(request)
        consultation_id = request.match_info["consultation_id"]
        if not CONSULTATION_ID.match(consultation_id):
            raise InvalidField("consultation_id", "not a consultation id")
        try:
            pool = request.app[POOL_OF_KEY](request.app)
        except KeyError:
            raise ServiceUnavailable("database-unavailable",
                                     "database not connected yet") from None
        control = Control(consultation_id, action)
        if action is Action.TRANSFER:
            control = await _transfer_target(request, control)
            await _screen_number(request.app[GUARD_OF_KEY](request.app), merchant_id, control)
        await request_control(pool, merchant_id, control)
        return json_response({"consultation_id": consultation_id, "action": str(action),
                              "state": "requested"}, status=202)

    return control_consultation


async def _transfer_target(request: web.Request, control: Control) -> Control:
    """A transfer's second party from the body: ``advisor_id`` or ``number``."""
    data = await read_json_object(request)
    unknown = set(data) - {"advisor_id", "number"}
    if unknown:
        raise InvalidField(min(unknown), "unknown field")
    advisor_id, number = data.get("advisor_id"), data.get("number")
    if (advisor_id is None) == (number is None):
        raise InvalidField("advisor_id", "give exactly one of advisor_id and number")
    if advisor_id is not None:
        if isinstance(advisor_id, bool) or not isinstance(advisor_id, int) \
                or not 1 <= advisor_id <= MAX_INT:
            raise InvalidField("advisor_id", f"expected an advisor id 1..{MAX_INT}")
        return replace(control, to_advisor_id=advisor_id)
    if not isinstance(number, str):
        raise InvalidField("number", "expected an E.164 number")
    try:
        return replace(control, to_number=str(E164.parse(number)))
    except InvalidNumber as exc:
        raise InvalidField("number", str(exc)) from None


async def _screen_number(guard: Guard | None, merchant_id: str, control: Control) -> None:
    """A transfer to a number the guard refuses (lists, policy, lock): 403
    ``number-refused`` with its ``reason``, nothing asked of the call."""
    if guard is None or control.to_number is None:
        return
    verdict = await guard.screen_transfer(E164.parse(control.to_number), merchant_id,
                                          control.callback_id)
    if verdict is not None:
        raise ApiError(403, "number-refused",
                       f"the number may not be called ({verdict.reason})",
                       field="number", reason=str(verdict.reason))


REQUESTED: Schema = {
    "type": "object", "required": ["consultation_id", "action", "state"],
    "additionalProperties": False,
    "properties": {"consultation_id": {"type": "string"},
                   "action": {"enum": [str(a) for a in Action]},
                   "state": {"const": "requested"}}}

_SUMMARIES = {
    Action.END: "End a consultation in progress (forced end: a message, then both hung up)",
    Action.HOLD: "Put the customer of a consultation on hold (music; the advisor waits)",
    Action.UNHOLD: "Take the customer off hold, back to the advisor",
    Action.TRANSFER: "Start a consult transfer to an advisor or a number (the customer held, "
                     "the advisor talks to them first)",
    Action.TRANSFER_COMPLETE: "Connect the customer to the transfer's second party (the "
                              "first advisor leaves)",
    Action.TRANSFER_CANCEL: "Cancel the transfer: the second party hung up, the customer "
                            "back to the first advisor",
}

TRANSFER_BODY: Schema = {
    "type": "object", "additionalProperties": False,
    "properties": {"advisor_id": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                   "number": {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$"}},
    "oneOf": [{"required": ["advisor_id"]}, {"required": ["number"]}]}

def operation(action: Action) -> Operation:
    """The route of ``action``: ``POST /v1/consultations/{consultation_id}/<action>``."""
    return Operation(
        "POST", f"/v1/consultations/{{consultation_id}}/{action.path}",
        database_errors_as_503(controlling(action)), _SUMMARIES[action], "advisors",
        {202: Reply("sent to the process running the call", REQUESTED)},
        access=MERCHANT, params=(Param("consultation_id", "path", {"type": "string"}),),
        body=TRANSFER_BODY if action is Action.TRANSFER else None,
        errors={**({403: ("number-refused",)} if action is Action.TRANSFER else {}),
                404: ("not-found",),
                409: ("consultation-not-running",
                      *(("consultation-not-talking",) if action is Action.HOLD else ())),
                503: ("database-unavailable",)})


OPERATIONS = [operation(action) for action in Action]
