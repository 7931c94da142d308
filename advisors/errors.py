"""The domain's API errors (rendered by :func:`shared.http.error_middleware`)::

    ApiError
    ├── InvalidField   400 invalid-field  (shared.http; a bad or unknown id too)
    ├── NotFound       404 not-found      (no such advisor, group or customer here)
    ├── Duplicate      409 duplicate      (a code, group name, account or number taken)
    ├── Busy           409 advisor-busy   (retiring an advisor rung, talking or awaited)
    ├── Retired        409 advisor-retired (changing a retired advisor)
    └── InUse          409 group-in-use   (deleting a group a consultation or flow uses)
"""

from __future__ import annotations

from shared.http import ApiError


class NotFound(ApiError):
    def __init__(self, what: str, ident: int | str) -> None:
        super().__init__(404, "not-found", f"no {what} {ident}")


class Duplicate(ApiError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(409, "duplicate", f"{field}: {message}", field=field)




class Busy(ApiError):
    def __init__(self, advisor_id: int, why: str) -> None:
        super().__init__(409, "advisor-busy", f"advisor {advisor_id} {why}")


class Retired(ApiError):
    def __init__(self, advisor_id: int) -> None:
        super().__init__(409, "advisor-retired", f"advisor {advisor_id} is retired")


class InUse(ApiError):
    def __init__(self, group_id: int, uses: list[str]) -> None:
        super().__init__(409, "group-in-use", f"group {group_id}: " + "; ".join(uses))
