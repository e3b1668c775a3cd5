"""Declarative screening rules: files -> typed model -> durable_rules -> reasons.

Rule files
==========

A rules directory holds rule files, named `*.rules.yaml` (found recursively,
hidden files skipped, read in order of their relative path), their test
cases, `*.cases.yaml`, the velocity counters rules read (`counters.yaml`,
service.riskdata.counters.loader) and the watchlists they look up (`lists.yaml`,
service.riskdata.lists). All rule files of a directory form one ruleset, checked
against that directory's counters and lists (service.rules.directory); the
server serves and hot-reloads the whole directory as one unit
(service.rules.reload).

    revision: 2024-06-01          # optional label: letters, digits, . _ + -
    appeal:                       # the appeal route of this file's block rules (see Appeal routes)
      zh: 如有异议，可携本人身份证件向本行或当地公安机关申诉。
      en: You may appeal with your ID at this bank or the local police.
    breaker: {max_block_share: 20%, window: 10m, min_events: 200}   # optional: its block rules' default
    rules:
      - id: K05_many_banks        # unique across files; letters, digits, _
        on: [card_opening]        # card_opening, sim_sale, transfer, closure
        when: banks_30d >= 3 and not card_opening.limited_function
        outcome: warn             # block | warn
        reason:
          zh: 本证件30天内已在{banks_30d}家银行开户
          en: This ID opened accounts at {banks_30d} banks in 30 days
        mode: enforce             # enforce (default) | shadow
        priority: 50              # default 100; lower = listed first
        basis: 反电信网络诈骗法 第十六条   # the law article or practice (recommended)
        description: ...          # optional
        owner: fraud-team@bank    # optional
        enabled: true             # default true; a disabled rule is validated, not evaluated
        appeal: {zh: ..., en: ...}  # block rules only: this rule's own appeal route (else the file's)
        breaker: {max_block_share: 2%, window: 1h, min_events: 500}  # block rules only: its own, or off

Unknown keys are errors. Every problem is reported as `file:line: problem`.

The ruleset revision stamped on every decision is `LABELS@HASH`: the
distinct `revision:` labels of the files, sorted and joined with `+` (none:
just `HASH`), and the first 12 hex digits of a SHA-256 over every rule
file's relative path and exact text, followed by counters.yaml and
lists.yaml (they change what the rules mean). Same files, same revision;
any edit, even a comment, a new one. Case files do not count.

Conditions (`when`)
===================

    transfer.amount_fen >= 5_000_000 and payer.age >= 60
    payer.non_local and not card_opening.has_local_tie
    transfer.amount_fen >= 0.8 * inflow_fen_30m
    card_opening.account_class in ["I", "II"]
    outlet.province not in ["11", "31"]
    transfer.payee_account in list.fraud_accounts
    outlet.region_code startswith "4401"
    transfer.ip_region_code matches "44%d%d%d%d|45%d+"

* Names: request fields by their dotted names in `service.pipeline.facts.FIELDS`
  (`applicant.age`, `person.non_local`, `outlet.region_code`, `event`,
  `local_hour`, ...), declared counters by their bare names (`banks_30d`),
  watchlists as `list.NAME` after `in`. A bare name is a field if the
  catalogue has it, else a counter. Unknown names are errors with a "did you
  mean". Every name must exist on every event kind in `on`.
* Numbers: `3`, `0.8`, `5_000_000`; `+ - * /` and unary `-`, with the usual
  precedence and parentheses. All arithmetic and comparisons are in IEEE
  doubles. `/` divides only by a non-zero constant. A comparison needs a
  single field or counter on one side (the other side may be any arithmetic).
* Strings: "..." or '...', taken literally (no escapes; no quotes,
  backslashes or control characters inside); only `==`, `!=`, `in [..]`,
  `not in [..]`, `startswith "prefix"` and `matches "pattern"` (see
  service.rules.patterns for the pattern subset: `.`, `%d`, `%.`, `[a-z]`,
  groups, `|`, `* + ?`, `{m,n}`; the whole string must match). Enum-like
  fields (`FieldSpec.choices`: event, sex, account class, identity check,
  carrier, channel, closure target, ...) compare only with their own
  values: `card_opening.account_class == "1"` is an error naming them.
* Lists: `FIELD in list.NAME` for a list declared in lists.yaml, and only
  with a field of the list's kind (`ListSpec.accepts_field`: an `account`
  list takes `transfer.payee_account`, not `payer.id_number`).
* Yes/no fields: alone (`payer.non_local`), with `not`, or `== true/false`.
* Identifiers (ID numbers, phones, accounts, devices): only `in list.NAME`
  and `not in list.NAME`; never compared, never shown.
* Logic: `and`, `or`, `not`, parentheses; `not in`.

Absent values
-------------

Optional values (no companion, unknown payee account age, a counter or list
hit not supplied) are absent, never null. A test on an absent value is
neither true nor false but *unknown*, with SQL's three-valued logic: `not
unknown` is unknown, `unknown and false` is false, `unknown or true` is true,
and a rule fires only when its condition is true. So `not (x > 5)` and
`x <= 5` both do not fire when x is absent, and `a > 5 or b > 5` fires when
a is 6 and b absent. The compiler implements this by pushing `not` into the
tests (De Morgan; `not (x > 5)` becomes `x <= 5`), where an absent value
makes each test false. `not` cannot be applied to `startswith`/`matches`
(durable_rules cannot negate a pattern).

Reasons
-------

`{name}` in a reason shows the value of a field or counter the condition
reads; `{name:yuan}` shows fen as yuan (150000 -> 1,500.00); `{name:days}`
a number of whole days as a length (不到1天 / less than a day, 1天 / 1 day,
7天 / 7 days) and `{name:days_ago}` as a time (24小时内 / less than a day
ago, 1天前 / 1 day ago, 7天前 / 7 days ago); the formats take numbers only
(service.rules.templates); `{{`/`}}` are braces. Evidence is every value the condition read, as (name, text) pairs;
list lookups appear as ("transfer.payee_account in list.fraud_accounts",
"hit"), never with the identifier.

Appeal routes
-------------

A refused customer must be told the reason and how to appeal (Art 32 of the
Anti-Telecom and Online Fraud Law). Every enforced block rule (disabled ones
included) needs an appeal route: its own `appeal: {zh, en}`, or its file's
top-level `appeal:`, which serves every block rule of the file without one.
The appeal is appended to both reason texts as a sentence of its own
(service.pipeline.outcome.with_appeal), so the reason says what happened and stays
as natural as it was written. Loading refuses a block rule with neither,
naming it (`file:line: rule 'X' blocks but gives no appeal route ...`), and
so do `riskgate rules check` and hot reload (the last good ruleset keeps
serving). A reason that merely mentions 申诉 / appeal does not count: the
route is a deliberate key, never a keyword found by accident. Shadow block
rules need none (they refuse no one) but get their file's, so a trial shows
the text its promotion will. Warn rules refuse nothing: `appeal:` on one is
an error. The fail policy's built-in BLOCK reason carries
service.pipeline.outcome.DEFAULT_APPEAL.

Breakers
--------

A block rule may carry a breaker (service.pipeline.breakers): its own
`breaker: {max_block_share: P%, window: W, min_events: N}`, `breaker: off`
for none, or else its file's top-level `breaker:`. `max_block_share` is a
percentage in (0 %, 100 %] with at most 4 decimals (`2%`, `0.05%`), `window`
a length from `1m` to `24h` (service.durations), `min_events` a whole number
from 1 to 10,000,000; all three are required, and unknown keys are errors. A
warn rule with a `breaker:` is an error, and never takes its file's default.

Over the window, the breaker counts the decisions of the event kinds the
rule screens, on every replica together, and the rule's enforced blocks
among them. When the window holds at least `min_events` decisions and more
than `max_block_share` of them were the rule's blocks, the rule is demoted
to shadow on every replica: still evaluated and reported (`shadow = true`,
`~ID` in the decision log, and in the entry's `demoted`), never deciding,
until `Rules/RearmBreaker` or a change of the rule itself (its event kinds,
condition, outcome or breaker: `Rule.identity`) re-arms it. Only enabled,
enforced block rules are counted (`Rule.watched`; a shadow rule's breaker
applies once it is promoted). Where it is counted: service.riskdata.breakers.

Outcome
-------

Every matching rule is reported. The outcome is the most severe *enforced*
rule's (block > warn; none: allow); shadow rules are reported with
`shadow = true` and never change it (service.pipeline.outcome.outcome_of). Reasons
are sorted by severity, then priority, then id (service.pipeline.outcome.order_reasons).
"""

from __future__ import annotations

from service.rules.compiler import CompiledPlan, compile_ruleset
from service.rules.loader import load_rules, load_sources
from service.rules.model import CounterInfo, Mode, Rule, RuleSet, counters_from_names

__all__ = [
    "CompiledPlan",
    "CounterInfo",
    "Mode",
    "Rule",
    "RuleSet",
    "compile_ruleset",
    "counters_from_names",
    "load_rules",
    "load_sources",
]
