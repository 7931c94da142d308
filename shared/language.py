"""The languages prompts are spoken in: Japanese first (the callers are in Japan)."""

from __future__ import annotations

import enum


class Language(enum.StrEnum):
    JAPANESE = "ja"
    ENGLISH = "en"
