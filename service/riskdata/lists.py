"""Watchlists as a rules directory declares them (`lists.yaml`): names, kinds, expiry defaults.

    lists:
      - name: fraud_accounts          # rules write `transfer.payee_account in list.fraud_accounts`
        kind: account                 # id_number | account | phone | device | region
        description: 公安机关认定的涉诈账户 / accounts identified by police as fraud-involved
      - name: police_warned
        kind: id_number
        confidential: true            # never named in answers, only in the decision log
        default_ttl: 72h              # entries added without an expiry stop matching after this

The declarations only: rules are checked against them, and `service.riskdata.watchlists`
keeps the entries in Redis.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from service.domain import local_time
from service.errors import ConfigError, SourceError, SourceProblem
from service.pipeline import validate
from service.yamlsrc import YMap, YScalar, YSeq, describe, parse_yaml

LISTS_FILE = "lists.yaml"
MAX_REASON = 256
MAX_AUTHOR = 64


class ListKind(enum.StrEnum):
    ID_NUMBER = "id_number"
    ACCOUNT = "account"
    PHONE = "phone"
    DEVICE = "device"
    REGION = "region"


# The catalogue fields each kind of list can be tested against (by their leaf).
KIND_LEAVES: Mapping[ListKind, frozenset[str]] = {
    ListKind.ID_NUMBER: frozenset({"id_number"}),
    ListKind.ACCOUNT: frozenset({"payer_account", "payee_account", "account_number"}),
    ListKind.PHONE: frozenset({"phone", "msisdn"}),
    ListKind.DEVICE: frozenset({"device_id"}),
    ListKind.REGION: frozenset({"region_code", "ip_region_code"}),
}


@dataclass(frozen=True, slots=True)
class ListSpec:
    name: str
    kind: ListKind
    description: str = ""
    default_ttl: timedelta | None = None
    # Never named in answers (evidence merges its look-ups into one "confidential list" entry);
    # named only in the decision log. For intelligence the screened person must not learn of.
    confidential: bool = False

    def accepts_field(self, field: str) -> bool:
        return field.rpartition(".")[2] in KIND_LEAVES[self.kind]

    def normalise(self, value: str, *, now: datetime) -> str:
        """The canonical form of a value of this list's kind, or InvalidValue."""
        if self.kind is ListKind.ID_NUMBER:
            return validate.parse_resident_id(value, on=local_time(now).date()).number
        if self.kind is ListKind.ACCOUNT:
            return validate.parse_account_number(value)
        if self.kind is ListKind.PHONE:
            return validate.parse_mobile(value)
        if self.kind is ListKind.REGION:
            return validate.parse_region_code(value)
        return validate.parse_text(value, max_length=128, required=True)


_TTL_UNITS = {"h": 3600, "d": 86400, "y": 365 * 86400}
_LIST_KEYS = ("name", "kind", "description", "default_ttl", "confidential")


def _parse_ttl(text: str) -> timedelta | None:
    if len(text) < 2 or text[-1] not in _TTL_UNITS or not text[:-1].isdigit() or int(text[:-1]) == 0:
        return None
    return timedelta(seconds=int(text[:-1]) * _TTL_UNITS[text[-1]])


def load_lists(rules_dir: Path, *, required: bool = False) -> dict[str, ListSpec]:
    """The lists declared in `rules_dir/lists.yaml` (none when the file is absent).

    A ruleset may declare no lists, so the server takes an absent file as none.
    A tool that writes to a list passes `required`: there an absent file means it
    looked in the wrong place (run outside the checkout, the relative default
    `rules` resolves elsewhere), and "unknown list" would hide that, so it is a
    ConfigError naming the path it looked at and the setting that moves it.
    """
    path = rules_dir / LISTS_FILE
    if not path.exists():
        if required:
            raise ConfigError(_missing_lists_file(rules_dir))
        return {}
    shown = str(path)
    tree, problems = parse_yaml(path.read_text(encoding="utf-8"), shown)
    specs: dict[str, ListSpec] = {}
    if tree is not None and not problems:
        specs = _lists_from_tree(tree, shown, problems)
    if problems:
        raise SourceError(problems)
    return specs


def _missing_lists_file(rules_dir: Path) -> str:
    """Where lists.yaml was looked for, resolved, and how to look elsewhere."""
    where = rules_dir.resolve()
    missing = "" if where.is_dir() else " (no such directory)"
    relative = "" if rules_dir.is_absolute() else ", relative to the current directory"
    return (
        f"no {LISTS_FILE} at {where / LISTS_FILE}{missing}: watchlists are declared in"
        f" $RISKGATE_RULES_DIR/{LISTS_FILE} (RISKGATE_RULES_DIR={rules_dir}{relative});"
        " set RISKGATE_RULES_DIR to the rules directory the server uses"
    )


def _lists_from_tree(tree: Any, file: str, problems: list[SourceProblem]) -> dict[str, ListSpec]:
    def problem(line: int, text: str) -> None:
        problems.append(SourceProblem(file, line, text))

    specs: dict[str, ListSpec] = {}
    if not isinstance(tree, YMap) or set(k.value for k, _ in tree.items) - {"lists"}:
        problem(getattr(tree, "line", 1), "expected a mapping with one key, 'lists'")
        return specs
    entries = tree.get("lists")
    if not isinstance(entries, YSeq):
        problem(tree.line, "'lists' must be a list")
        return specs
    lines: dict[str, int] = {}
    for entry in entries.items:
        if not isinstance(entry, YMap):
            problem(entry.line, f"a list declaration must be a mapping, not {describe(entry)}")
            continue
        for key, _ in entry.items:
            if key.value not in _LIST_KEYS:
                problem(key.line, f"unknown key '{key.value}' (expected one of {', '.join(_LIST_KEYS)})")
        name, kind, ttl = entry.get("name"), entry.get("kind"), entry.get("default_ttl")
        description = entry.get("description")
        if not isinstance(name, YScalar) or not isinstance(name.value, str) or not name.value.isidentifier():
            problem(entry.line, "a list needs a 'name' of letters, digits and _")
            continue
        if name.value in lines:
            problem(name.line, f"duplicate list '{name.value}' (first at line {lines[name.value]})")
            continue
        lines[name.value] = name.line
        kinds = ", ".join(k.value for k in ListKind)
        if not isinstance(kind, YScalar) or kind.value not in set(ListKind):
            problem(kind.line if kind else entry.line, f"list '{name.value}': 'kind' must be one of {kinds}")
            continue
        default_ttl = None
        if ttl is not None:
            default_ttl = _parse_ttl(str(ttl.value)) if isinstance(ttl, YScalar) else None
            if default_ttl is None:
                problem(ttl.line, f"list '{name.value}': 'default_ttl' must look like 72h, 30d or 3y")
                continue
        confidential = entry.get("confidential")
        if confidential is not None and (
            not isinstance(confidential, YScalar) or not isinstance(confidential.value, bool)
        ):
            problem(confidential.line, f"list '{name.value}': 'confidential' must be true or false")
            continue
        text = description.value if isinstance(description, YScalar) and description.value else ""
        secret = bool(confidential.value) if isinstance(confidential, YScalar) else False
        specs[name.value] = ListSpec(name.value, ListKind(str(kind.value)), str(text), default_ttl, secret)
    return specs
