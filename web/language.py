"""The language of a page: ``?lang=ja|en`` if given, else the first of Japanese and
English in the browser's ``Accept-Language`` (by its q-values), else Japanese."""

from __future__ import annotations

from aiohttp import web

from shared.language import Language

_BY_TAG = {lang.value: lang for lang in Language}


def page_language(request: web.Request) -> Language:
    chosen = _BY_TAG.get(request.query.get("lang", ""))
    if chosen is not None:
        return chosen
    return accepted(request.headers.get("Accept-Language", ""))


def accepted(header: str) -> Language:
    """The most wanted of our languages in an ``Accept-Language`` header; Japanese when it
    names neither (or is malformed)."""
    ranked: list[tuple[float, int, Language]] = []
    for position, item in enumerate(header.split(",")):
        tag, _, params = item.strip().partition(";")
        lang = _BY_TAG.get(tag.strip().lower().split("-")[0])
        if lang is None:
            continue
        ranked.append((-_quality(params), position, lang))
    ranked = [r for r in ranked if r[0] < 0]     # q=0 means "not this one"
    return min(ranked)[2] if ranked else Language.JAPANESE


def _quality(params: str) -> float:
    name, _, value = params.strip().partition("=")
    if name.strip() != "q":
        return 1.0
    try:
        q = float(value)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0
