"""Watchlists in Redis: declared in `lists.yaml`, stored only as keyed hashes.

Declaration (`$RISKGATE_RULES_DIR/lists.yaml`)::

    lists:
      - name: fraud_accounts          # rules write `transfer.payee_account in list.fraud_accounts`
        kind: account                 # id_number | account | phone | device | region
        description: 公安机关认定的涉诈账户 / accounts identified by police as fraud-involved
      - name: police_warned
        kind: id_number
        default_ttl: 72h              # entries added without an expiry stop matching after this

Layout (every identifier is an HMAC under the deployment's secret, see
`service.counters.keys`; a value is hashed with its list's *kind* as the
domain, which is also how counters hash the same entity):

* `rg:l:{<entity>}`: a hash per listed value, holding for each list it is on
  `<list>` = expiry in epoch milliseconds (`0`: never) and `<list>:m` = the
  entry's reason, author and time as JSON. The braces are the entity's
  Cluster hash tag, the same as its counters'. The key expires with its
  last-expiring entry.
* `rg:li:<list>`: a sorted set per list, entity hash → expiry (`+inf`: never),
  for sizes (`ZCOUNT now +inf`) and exports.

An entry matches while its expiry is later than the event's `occurred_at`.
A look-up is one `HMGET` per screened value, sent in the screening's
pipeline.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

from service import validate
from service.counters.keys import KeyHasher
from service.domain import local_time
from service.errors import ConfigError, InvalidValue, SourceError, SourceProblem, UnknownList
from service.rules.yamlsrc import YMap, YScalar, YSeq, describe, parse_yaml

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


@dataclass(frozen=True, slots=True)
class Entry:
    list: str
    value_hash: str
    reason: str
    added_by: str
    added_at: datetime
    expires_at: datetime | None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# Sets one entry and keeps the key alive exactly as long as its latest-expiring entry.
_ADD_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':m', ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local latest = 0
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, -2) ~= ':m' then
    local expiry = tonumber(fields[i + 1])
    if expiry == 0 then
      redis.call('PERSIST', KEYS[1])
      return 1
    end
    if expiry > latest then latest = expiry end
  end
end
redis.call('PEXPIREAT', KEYS[1], latest)
return 1
"""


class Watchlists:
    """Reads and writes watchlist entries; `client` is a redis.asyncio Redis or RedisCluster."""

    def __init__(self, client: Any, hasher: KeyHasher, specs: Mapping[str, ListSpec]) -> None:
        self._client = client
        self._hasher = hasher
        self.specs = dict(specs)
        self._add_sha: str | None = None

    def spec(self, name: str) -> ListSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownList(f"unknown list '{name}' (declared: {', '.join(sorted(self.specs)) or 'none'})") from None

    def entity_of(self, spec: ListSpec, value: str) -> str:
        return self._hasher.entity(((spec.kind.value, value),))

    def entry_key(self, entity: str) -> str:
        return f"{self._hasher.prefix}:l:{{{entity}}}"

    def index_key(self, name: str) -> str:
        return f"{self._hasher.prefix}:li:{name}"

    def prepare(
        self, name: str, value: str, *, reason: str, added_by: str, expires_at: datetime | None, now: datetime
    ) -> Entry:
        """Validate and hash one entry without storing it. Raises UnknownList, or InvalidValue
        naming its field (value, reason, added_by, expires_at)."""
        spec = self.spec(name)
        normalised = self.normalise(spec, value, now=now)
        try:
            reason = validate.parse_text(reason, max_length=MAX_REASON, required=True)
        except InvalidValue as error:
            raise error.at("reason") from None
        try:
            added_by = validate.parse_text(added_by, max_length=MAX_AUTHOR, required=True)
        except InvalidValue as error:
            raise error.at("added_by") from None
        if expires_at is None and spec.default_ttl is not None:
            expires_at = now + spec.default_ttl
        if expires_at is not None and expires_at <= now:
            raise InvalidValue("must be in the future", "expires_at")
        return Entry(name, self.entity_of(spec, normalised), reason, added_by, now, expires_at)

    def _queue_add(self, pipe: Any, sha: str, entry: Entry) -> None:
        meta = json.dumps({"why": entry.reason, "by": entry.added_by, "at": _ms(entry.added_at)}, ensure_ascii=False)
        expiry = _ms(entry.expires_at) if entry.expires_at else 0
        pipe.evalsha(sha, 1, self.entry_key(entry.value_hash), entry.list, expiry, meta)
        pipe.zadd(self.index_key(entry.list), {entry.value_hash: expiry if expiry else math.inf})

    async def add(
        self, name: str, value: str, *, reason: str, added_by: str, expires_at: datetime | None, now: datetime
    ) -> Entry:
        """Add or replace one entry. Raises UnknownList or InvalidValue."""
        entry = self.prepare(name, value, reason=reason, added_by=added_by, expires_at=expires_at, now=now)
        await self.add_many([entry])
        return entry

    async def add_many(self, entries: Sequence[Entry]) -> None:
        """Store prepared entries in one pipelined round trip (bulk import)."""
        for attempt in (1, 2):
            if self._add_sha is None:
                # SCRIPT LOAD reaches every primary of a cluster.
                self._add_sha = str(await self._client.script_load(_ADD_SCRIPT))
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                self._queue_add(pipe, self._add_sha, entry)
            try:
                await pipe.execute()
                return
            except NoScriptError:
                # Redis restarted (or failed over) and lost its script cache: load again, once.
                self._add_sha = None
                if attempt == 2:
                    raise

    @staticmethod
    def normalise(spec: ListSpec, value: str, *, now: datetime) -> str:
        """`spec.normalise`, its InvalidValue located at the field `value`."""
        try:
            return spec.normalise(value, now=now)
        except InvalidValue as error:
            raise error.at("value") from None

    def value_hash(self, name: str, value: str, *, now: datetime) -> str:
        """The keyed hash a value is stored under on a list (what audit entries show)."""
        spec = self.spec(name)
        return self.entity_of(spec, self.normalise(spec, value, now=now))

    async def remove(self, name: str, value: str, *, now: datetime) -> bool:
        entity = self.value_hash(name, value, now=now)
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(self.entry_key(entity), name, f"{name}:m")
        pipe.zrem(self.index_key(name), entity)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def check(self, name: str, value: str, *, at: datetime) -> Entry | None:
        spec = self.spec(name)
        entity = self.entity_of(spec, self.normalise(spec, value, now=at))
        expiry, meta = await self._client.hmget(self.entry_key(entity), [name, f"{name}:m"])
        if expiry is None or not _live(int(expiry), _ms(at)):
            return None
        details = json.loads(meta) if meta else {}
        return Entry(
            name,
            entity,
            str(details.get("why", "")),
            str(details.get("by", "")),
            _from_ms(int(details.get("at", 0))),
            _from_ms(int(expiry)) if int(expiry) else None,
        )

    async def sizes(self, *, at: datetime) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        names = sorted(self.specs)
        for name in names:
            pipe.zcount(self.index_key(name), _ms(at) + 1, math.inf)
        return dict(zip(names, (int(n) for n in await pipe.execute()), strict=True))

    # --- the screening path -------------------------------------------------

    def plan(self, checks: Iterable[tuple[str, str]], values: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
        """Group (list, field) checks by the entity key they read: {key: [(list, field), ...]}.

        A field with no value in this request (no device given) is left out:
        its check is absent, not false.
        """
        plan: dict[str, list[tuple[str, str]]] = {}
        for name, field in checks:
            value = values.get(field)
            spec = self.specs.get(name)
            if value is None or spec is None:
                continue
            plan.setdefault(self.entry_key(self.entity_of(spec, value)), []).append((name, field))
        return plan

    @staticmethod
    def queue_lookups(pipe: Any, plan: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        for key, checks in plan.items():
            pipe.hmget(key, [name for name, _ in checks])

    @staticmethod
    def read_lookups(
        plan: Mapping[str, Sequence[tuple[str, str]]], replies: Sequence[Sequence[bytes | None]], at: datetime
    ) -> dict[tuple[str, str], bool]:
        now_ms = _ms(at)
        hits: dict[tuple[str, str], bool] = {}
        for checks, reply in zip(plan.values(), replies, strict=True):
            for (name, field), expiry in zip(checks, reply, strict=True):
                hits[(name, field)] = expiry is not None and _live(int(expiry), now_ms)
        return hits


def _live(expiry_ms: int, at_ms: int) -> bool:
    return expiry_ms == 0 or expiry_ms > at_ms
