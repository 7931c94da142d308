"""The directory's routes, one declaration per collection: list and add at ``path``, read
and change at ``path/{id}`` (:class:`Resource`); advisors, groups and customers differ only
in their parser, store methods, JSON and schemas."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from advisors import schemas as s
from advisors.model import Advisor, Customer, Group
from advisors.presence import Presence
from advisors.schemas import AdvisorInput, CustomerInput, GroupInput
from advisors.store import AdvisorStore
from shared.http import InvalidField, json_response, read_json_object
from shared.openapi import MERCHANT, Operation, Param, Reply, Schema

T = TypeVar("T")
In = TypeVar("In")  # the parsed input
#: the store and the caller's merchant, for a request (401/503 otherwise)
Directory = Callable[[web.Request], tuple[AdvisorStore, str]]

UNAVAILABLE = {503: ("advisors-unavailable", "database-unavailable")}
_ONE = {400: ("invalid-field",), 404: ("not-found",), **UNAVAILABLE}
_ADD = {400: ("invalid-field",), 409: ("duplicate",), **UNAVAILABLE}
_CHANGE = {**_ONE, 409: ("duplicate", "advisor-retired")}


def path_id(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not (text.isascii() and text.isdigit() and 0 < len(text) < 19):
        raise InvalidField(name, "expected a positive integer id")
    return int(text)


def id_param(name: str) -> tuple[Param, ...]:
    return (Param(name, "path", {"type": "integer", "minimum": 1}),)


@dataclass(frozen=True)
class Resource(Generic[T, In]):
    what: str
    path: str
    id_name: str
    tag: str
    parse: Callable[[Mapping[str, Any], bool], In]
    to_json: Callable[[T], dict[str, Any]]
    all: Callable[[AdvisorStore, str], Awaitable[list[T]]]
    one: Callable[[AdvisorStore, str, int], Awaitable[T]]
    create: Callable[[AdvisorStore, str, In], Awaitable[T]]
    update: Callable[[AdvisorStore, str, int, In], Awaitable[T]]
    schema: Schema
    create_schema: Schema
    change_schema: Schema
    #: what POST and PATCH do, for the document
    create_doc: str
    change_doc: str

    def collection(self, directory: Directory) -> list[Operation]:
        async def list_all(request: web.Request) -> web.Response:
            store, merchant = directory(request)
            return json_response({"items": [self.to_json(x)
                                            for x in await self.all(store, merchant)]})

        async def add(request: web.Request) -> web.Response:
            store, merchant = directory(request)
            new = self.parse(await read_json_object(request), True)
            return json_response(self.to_json(await self.create(store, merchant, new)), 201)

        add.__doc__ = self.create_doc
        return [
            Operation("GET", self.path, list_all, f"List {self.what}s", self.tag,
                      {200: Reply(f"the merchant's {self.what}s", s.listing(self.schema))},
                      access=MERCHANT, errors=UNAVAILABLE),
            Operation("POST", self.path, add, f"Add a {self.what}", self.tag,
                      {201: Reply(f"the {self.what}", self.schema)}, access=MERCHANT,
                      body=self.create_schema, errors=_ADD)]

    def items(self, directory: Directory) -> list[Operation]:
        item_path = f"{self.path}/{{{self.id_name}}}"

        async def get(request: web.Request) -> web.Response:
            store, merchant = directory(request)
            return json_response(self.to_json(await self.one(
                store, merchant, path_id(request, self.id_name))))

        async def change(request: web.Request) -> web.Response:
            store, merchant = directory(request)
            ident = path_id(request, self.id_name)
            changes = self.parse(await read_json_object(request), False)
            return json_response(self.to_json(await self.update(store, merchant, ident,
                                                                changes)))

        change.__doc__ = self.change_doc
        return [
            Operation("GET", item_path, get, f"One {self.what}", self.tag,
                      {200: Reply(f"the {self.what}", self.schema)}, access=MERCHANT,
                      params=id_param(self.id_name), errors=_ONE),
            Operation("PATCH", item_path, change, f"Change a {self.what}", self.tag,
                      {200: Reply(f"the {self.what}", self.schema)}, access=MERCHANT,
                      params=id_param(self.id_name), body=self.change_schema,
                      errors=_CHANGE)]


def _advisor_json(found: tuple[Advisor, Presence]) -> dict[str, Any]:
    return s.advisor_json(*found)


ADVISORS: Resource[tuple[Advisor, Presence], AdvisorInput] = Resource(
    "advisor", "/v1/advisors", "advisor_id", "advisors",
    lambda data, create: s.parse_advisor(data, create=create), _advisor_json,
    AdvisorStore.advisors, lambda st, m, i: st.advisor(m, i), AdvisorStore.create_advisor,
    AdvisorStore.update_advisor, s.ADVISOR, s.ADVISOR_CREATE, s.ADVISOR_INPUT,
    "A new advisor, offline until they go online.",
    "Change the fields given; ``groups`` replaces the advisor's groups.")
GROUPS: Resource[Group, GroupInput] = Resource(
    "group", "/v1/advisor-groups", "group_id", "advisor groups",
    lambda data, create: s.parse_group(data, create=create), s.group_json,
    lambda st, m: st.groups(m), lambda st, m, i: st.group(m, i), AdvisorStore.create_group,
    AdvisorStore.update_group, s.GROUP, s.GROUP_CREATE, s.GROUP_INPUT,
    "A group customers choose; a one-member group is a named advisor.",
    "Rename, or replace the members.")
CUSTOMERS: Resource[Customer, CustomerInput] = Resource(
    "customer", "/v1/customers", "customer_id", "customers",
    lambda data, create: s.parse_customer(data, create=create), s.customer_json,
    lambda st, m: st.customers(m), lambda st, m, i: st.customer(m, i),
    AdvisorStore.create_customer, AdvisorStore.update_customer, s.CUSTOMER,
    s.CUSTOMER_CREATE, s.CUSTOMER_INPUT,
    "A customer account with its phone numbers (national or E.164).",
    "Change the account id or name, or replace the numbers.")
