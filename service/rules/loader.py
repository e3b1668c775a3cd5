"""Load a rules directory into a validated `RuleSet`, or fail with every problem as `file:line: problem`.

Appeal routes (Art 32 of the Anti-Telecom and Online Fraud Law: a restricted
customer is told the reason and how to appeal). Every enforced block rule
needs an appeal route, written as its own `appeal: {zh: ..., en: ...}` or
once at the top of its file for all the file's block rules (a rule's own
wins). It is appended to the rule's reason texts as a sentence of its own,
so the reason says what happened and the appeal how to contest it. A block
rule with neither is refused, naming the rule: a reason that merely mentions
申诉 does not count, so no rule passes the check by accident. Shadow block
rules need none (they never refuse anyone) but get one when there is one, so
the trial's text is the text promotion will show. Warn rules refuse nothing:
an `appeal:` on one is an error, and a file's appeal is not appended to them.

Breakers (service.pipeline.breakers): a block rule's own `breaker: {max_block_share, window,
min_events}`, `breaker: off` for none, or its file's top-level `breaker:`; every value is checked
and reported at its line; a warn rule with one is an error and takes no file default.

Which files are rules: every `*.rules.yaml` under the directory (recursively,
skipping hidden files and directories), in order of their relative path.
`*.cases.yaml` files are test cases (service.rules.cases); counters.yaml and
lists.yaml are read by service.rules.directory, which passes what they declare
in (`counters`, `lists`) and their texts for the revision (`also_hashed`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from service.domain import EventKind, Outcome
from service.durations import seconds_of
from service.errors import ConditionSyntaxError, SourceError, SourceProblem, TemplateError
from service.pipeline.breakers import MAX_MIN_EVENTS, MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS, PPM, Breaker
from service.pipeline.facts import FieldType
from service.pipeline.outcome import Appeal, Language
from service.riskdata.lists import ListSpec
from service.rules import expr as ast
from service.rules.check import check_condition
from service.rules.compiler import MAX_MESSAGE_VALUES, MAX_TESTS_PER_SHARD, values_read_on
from service.rules.logic import cost_per_kind, nnf
from service.rules.model import (
    Condition,
    CounterInfo,
    FieldRef,
    ListCheck,
    Mode,
    Read,
    Rule,
    RuleSet,
    Template,
)
from service.rules.templates import AMOUNT, append_appeal, parse_template, render
from service.suggest import suggest
from service.yamlsrc import YMap, YNode, YScalar, YSeq, describe, parse_yaml

RULES_SUFFIX = ".rules.yaml"
CASES_SUFFIX = ".cases.yaml"

TOP_KEYS = ("revision", "appeal", "breaker", "rules")
RULE_KEYS = (
    "id",
    "on",
    "when",
    "outcome",
    "reason",
    "mode",
    "priority",
    "description",
    "owner",
    "enabled",
    "basis",
    "appeal",
    "breaker",
)
REQUIRED_RULE_KEYS = ("id", "on", "when", "outcome", "reason")
REASON_KEYS = ("zh", "en")
APPEAL_KEYS: tuple[Language, Language] = ("zh", "en")
BREAKER_KEYS = ("max_block_share", "window", "min_events")
BREAKER_OFF = "off"
_BREAKER_SHAPE = "{max_block_share: 2%, window: 10m, min_events: 200}"
_SHARE = re.compile(r"(0|[1-9][0-9]{0,2})(\.[0-9]{1,4})?%")
_ID = re.compile(r"[A-Za-z0-9_]+")
_REVISION = re.compile(r"[A-Za-z0-9._+\-]{1,64}")
_OUTCOMES = {"block": Outcome.BLOCK, "warn": Outcome.WARN}


def find_files(directory: Path, suffix: str) -> list[Path]:
    """Files under `directory` ending in `suffix`, hidden ones excluded, sorted by relative path."""
    found = []
    for path in directory.rglob(f"*{suffix}"):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def read_source(path: Path, shown: str) -> tuple[str | None, list[SourceProblem]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [SourceProblem(shown, 0, f"cannot read the file: {exc.strerror or exc}")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [SourceProblem(shown, line, "the file is not valid UTF-8")]


def revision_of(sources: Sequence[SourceText], labels: Iterable[str]) -> str:
    """`label@hash`: declared labels (sorted, '+'-joined) and 12 hex of SHA-256 over every file.

    The hash covers each file's relative name and exact text, so any edit
    (even a comment) gives a new revision, and the same files always give
    the same one.
    """
    digest = hashlib.sha256()
    for source in sources:
        name = source.relative or source.shown
        digest.update(name.encode("utf-8") + b"\0" + source.text.encode("utf-8") + b"\0")
    short = digest.hexdigest()[:12]
    unique = sorted(set(labels))
    return f"{'+'.join(unique)}@{short}" if unique else short


@dataclass(frozen=True, slots=True)
class SourceText:
    """One rule file's text; `shown` names it in problems, `relative` (its path inside the
    rules directory) goes into the revision hash so the revision does not depend on how
    the directory was named."""

    shown: str
    text: str
    relative: str = ""


@dataclass(slots=True)
class _Context:
    counters: Mapping[str, CounterInfo]
    lists: Mapping[str, ListSpec]
    problems: list[SourceProblem]
    first_seen: dict[str, str]


class _FileLoader:
    def __init__(self, file: str, ctx: _Context) -> None:
        self.file = file
        self.ctx = ctx
        self.labels: list[str] = []
        self.file_appeal: Appeal | None = None
        self.file_appeal_written = False  # present, even if broken: its own problems are reported
        self.file_breaker: Breaker | None = None  # the default breaker of the file's block rules

    def problem(self, line: int, text: str) -> None:
        self.ctx.problems.append(SourceProblem(self.file, line, text))

    def load(self, tree: YNode | None) -> list[Rule]:
        if tree is None:
            return []
        if not isinstance(tree, YMap):
            self.problem(tree.line, "expected a mapping with 'rules:' at the top level")
            return []
        for key, _ in tree.items:
            if key.value not in TOP_KEYS:
                self.unknown_key(key, TOP_KEYS, "at the top level")
        revision = tree.get("revision")
        if revision is not None:
            self.revision(revision)
        appeal = tree.get("appeal")
        if appeal is not None:
            self.file_appeal_written = True
            self.file_appeal = self.appeal(appeal)
        breaker = tree.get("breaker")
        if breaker is not None:
            if isinstance(breaker, YMap):
                self.file_breaker = self.breaker(breaker)
            else:
                self.problem(
                    breaker.line,
                    f"'breaker' at the top level must be {_BREAKER_SHAPE} (the default of the file's block "
                    f"rules), got {describe(breaker)}",
                )
        rules_node = tree.get("rules")
        if rules_node is None:
            self.problem(tree.line, "missing 'rules:' (a list of rules)")
            return []
        if isinstance(rules_node, YScalar) and rules_node.value is None:
            return []
        if not isinstance(rules_node, YSeq):
            self.problem(rules_node.line, f"'rules' must be a list of rules, got {describe(rules_node)}")
            return []
        rules = []
        for index, item in enumerate(rules_node.items, start=1):
            rule = self.rule(item, index)
            if rule is not None:
                rules.append(rule)
        return rules

    def unknown_key(self, key: YScalar, allowed: Sequence[str], where: str) -> None:
        name = str(key.value)
        guess = suggest(name, list(allowed))
        hint = f", did you mean '{guess}'?" if guess else f" (allowed: {', '.join(allowed)})"
        self.problem(key.line, f"unknown key '{name}' {where}{hint}")

    def revision(self, node: YNode) -> None:
        value = node.value if isinstance(node, YScalar) else None
        text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
        if text is None or not _REVISION.fullmatch(text):
            self.problem(node.line, "'revision' must be a short label of letters, digits and . _ + - (e.g. 2024-06-01)")
            return
        self.labels.append(text)

    # ------------------------------------------------------------- rules

    def rule(self, node: YNode, index: int) -> Rule | None:
        if not isinstance(node, YMap):
            self.problem(node.line, f"rule #{index} must be a mapping, got {describe(node)}")
            return None
        errors_before = len(self.ctx.problems)
        rule_id = self.rule_id(node, index)
        label = f"rule '{rule_id}'" if rule_id else f"rule #{index}"
        for key, _ in node.items:
            if key.value not in RULE_KEYS:
                self.unknown_key(key, RULE_KEYS, f"in {label}")
        for required in REQUIRED_RULE_KEYS:
            if node.get(required) is None:
                self.problem(node.line, f"{label} has no '{required}'")
        on = self.on(node.get("on"))
        outcome = self.outcome(node.get("outcome"))
        mode = self.choice(node.get("mode"), "mode", {m.value: m for m in Mode}, Mode.ENFORCE)
        priority = self.priority(node.get("priority"))
        enabled = self.flag(node.get("enabled"), "enabled", default=True)
        description = self.text(node.get("description"), "description")
        owner = self.text(node.get("owner"), "owner")
        basis = self.text(node.get("basis"), "basis")
        when_node = node.get("when")
        checked = self.when(when_node, on, label) if on else None
        reads: tuple[Read, ...] = checked[1] if checked else ()
        reasons = self.reason(node.get("reason"), reads if checked else None)
        own_appeal_node = node.get("appeal")
        own_appeal = self.appeal(own_appeal_node) if own_appeal_node is not None else None
        breaker = self.rule_breaker(node.get("breaker"), label, outcome)
        if len(self.ctx.problems) > errors_before:
            return None
        # Whether a route is needed is checked on an otherwise valid rule (as the message sizes are
        # on an otherwise valid ruleset): a rule with an unknown field is not also told to add one.
        appeal = self.rule_appeal(node, label, outcome, mode, own_appeal)
        if appeal is not None and reasons is not None:
            reasons = self.append_appeal(node.get("reason"), reasons, appeal)
        if len(self.ctx.problems) > errors_before:
            return None
        assert rule_id and on and outcome and checked and reasons and isinstance(when_node, YScalar)
        assert isinstance(when_node.value, str)
        return Rule(
            id=rule_id,
            on=on,
            when=checked[0],
            when_text=when_node.value.strip(),
            outcome=outcome,
            reason_zh=reasons[0],
            reason_en=reasons[1],
            reads=reads,
            mode=mode,
            priority=priority,
            description=description,
            owner=owner,
            enabled=enabled,
            basis=basis,
            file=self.file,
            line=node.line,
            appeal=appeal,
            breaker=breaker,
        )

    def rule_appeal(
        self, node: YMap, label: str, outcome: Outcome | None, mode: Mode, own: Appeal | None
    ) -> Appeal | None:
        """The appeal route appended to this rule's reasons: its own, else (block rules) its file's."""
        own_node = node.get("appeal")
        if own_node is not None and outcome is Outcome.WARN:
            self.problem(
                own_node.line,
                f"{label} warns: 'appeal' is only for block rules (a warning refuses nothing; "
                "the clerk acts on the reason)",
            )
            return None
        if outcome is not Outcome.BLOCK:
            return None
        appeal = own if own_node is not None else self.file_appeal
        written = own_node is not None or self.file_appeal_written
        if appeal is None and not written and mode is Mode.ENFORCE:
            self.problem(
                node.line,
                f"{label} blocks but gives no appeal route (Art 32: a refused customer is told how to "
                "appeal): add 'appeal: {zh: ..., en: ...}' to the rule, or once at the top of the file "
                "for all its block rules",
            )
        return appeal

    def rule_breaker(self, node: YNode | None, label: str, outcome: Outcome | None) -> Breaker | None:
        """The rule's breaker: its own, `off` for none, else (block rules) its file's default."""
        if node is None:
            return self.file_breaker if outcome is Outcome.BLOCK else None
        if outcome is Outcome.WARN:
            self.problem(node.line, f"{label} warns: 'breaker' is only for block rules (it counts the rule's blocks)")
            return None
        if isinstance(node, YScalar) and node.value == BREAKER_OFF:
            return None
        if not isinstance(node, YMap):
            self.problem(
                node.line,
                f"'breaker' must be {_BREAKER_SHAPE}, or {BREAKER_OFF} (no breaker for this rule), "
                f"got {describe(node)}",
            )
            return None
        return self.breaker(node)

    def breaker(self, node: YMap) -> Breaker | None:
        """A `breaker:` mapping: a share (0% < share <= 100%), a window (1m to 24h), min_events >= 1."""
        for key, _ in node.items:
            if key.value not in BREAKER_KEYS:
                self.unknown_key(key, BREAKER_KEYS, "in breaker")
        values: list[int] = []
        for name in BREAKER_KEYS:
            value_node = node.get(name)
            if value_node is None:
                self.problem(node.line, f"breaker has no '{name}'")
                continue
            value = value_node.value if isinstance(value_node, YScalar) else None
            parsed: int | None = None
            if name == "max_block_share":
                if isinstance(value, str) and _SHARE.fullmatch(value):
                    parsed = int(Decimal(value[:-1]) * (PPM // 100))
                    parsed = parsed if 0 < parsed <= PPM else None
                if parsed is None:
                    self.problem(
                        value_node.line,
                        "breaker.max_block_share must be a percentage above 0% and at most 100%, with at most "
                        f"4 decimals (e.g. 2% or 0.5%), got {describe(value_node)}",
                    )
            elif name == "window":
                seconds = seconds_of(value) if isinstance(value, str) else None
                if seconds is not None and MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
                    parsed = seconds
                else:
                    self.problem(
                        value_node.line,
                        "breaker.window must be a length of time from 1m to 24h (e.g. 10m), "
                        f"got {describe(value_node)}",
                    )
            elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_MIN_EVENTS:
                parsed = value
            else:
                self.problem(
                    value_node.line,
                    f"breaker.min_events must be a whole number from 1 to {MAX_MIN_EVENTS}, got {describe(value_node)}",
                )
            if parsed is not None:
                values.append(parsed)
        if len(values) != len(BREAKER_KEYS):
            return None
        return Breaker(share_ppm=values[0], window_seconds=values[1], min_events=values[2])

    def appeal(self, node: YNode) -> Appeal | None:
        """An `appeal:` mapping: one plain sentence per language, no placeholders."""
        if not isinstance(node, YMap):
            self.problem(node.line, f"'appeal' must have 'zh' and 'en' texts, got {describe(node)}")
            return None
        for key, _ in node.items:
            if key.value not in APPEAL_KEYS:
                self.unknown_key(key, APPEAL_KEYS, "in appeal")
        texts: dict[Language, str] = {}
        for language in APPEAL_KEYS:
            text_node = node.get(language)
            if text_node is None:
                self.problem(node.line, f"appeal has no '{language}' text")
                continue
            value = text_node.value if isinstance(text_node, YScalar) else None
            if value is None or (isinstance(value, str) and not value.strip()):
                self.problem(text_node.line, f"appeal.{language} is empty")
                continue
            if not isinstance(value, str):
                self.problem(text_node.line, f"appeal.{language} must be text, got {describe(text_node)}")
                continue
            try:
                template = parse_template(value.strip())
            except TemplateError as exc:
                self.problem(text_node.line, f"appeal.{language}: {exc}")
                continue
            if template.placeholders:
                shown = template.placeholders[0].name
                self.problem(
                    text_node.line,
                    f"appeal.{language} cannot show values ('{{{shown}}}'): the appeal route is the same "
                    "for every customer",
                )
                continue
            texts[language] = render(template, {}, language)
        if len(texts) != 2:
            return None
        return Appeal(texts["zh"], texts["en"])

    def append_appeal(
        self, reason_node: YNode | None, reasons: tuple[Template, Template], appeal: Appeal
    ) -> tuple[Template, Template]:
        """Both reason texts followed by the appeal; a reason that already holds it is an error."""
        joined: list[Template] = []
        for language, template in zip(APPEAL_KEYS, reasons, strict=True):
            said = appeal.text(language).rstrip("。.")
            if said and said in render(template, {}, language):
                text_node = reason_node.get(language) if isinstance(reason_node, YMap) else None
                self.problem(
                    text_node.line if text_node is not None else 0,
                    f"reason.{language} already says the appeal text, which is appended to it: "
                    "remove it from the reason",
                )
            joined.append(append_appeal(template, appeal, language))
        return joined[0], joined[1]

    def rule_id(self, node: YMap, index: int) -> str | None:
        id_node = node.get("id")
        if id_node is None:
            return None
        value = id_node.value if isinstance(id_node, YScalar) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            value = str(value)
        if not isinstance(value, str) or not _ID.fullmatch(value):
            shown = describe(id_node)
            self.problem(id_node.line, f"rule id {shown} may only use letters, digits and '_'")
            return None
        where = f"{self.file}:{id_node.line}"
        first = self.ctx.first_seen.get(value)
        if first is not None:
            self.problem(id_node.line, f"duplicate rule id '{value}' (first defined at {first})")
        else:
            self.ctx.first_seen[value] = where
        return value

    def on(self, node: YNode | None) -> tuple[EventKind, ...] | None:
        if node is None:
            return None
        if not isinstance(node, YSeq):
            self.problem(node.line, f"'on' must be a list of event kinds, e.g. [transfer], got {describe(node)}")
            return None
        if not node.items:
            self.problem(node.line, "'on' must list at least one event kind")
            return None
        kinds: list[EventKind] = []
        ok = True
        names = [k.value for k in EventKind]
        for item in node.items:
            value = item.value if isinstance(item, YScalar) else None
            if not isinstance(value, str) or value not in names:
                shown = describe(item)
                guess = suggest(value, names) if isinstance(value, str) else None
                hint = f", did you mean '{guess}'?" if guess else f" (expected one of: {', '.join(names)})"
                self.problem(item.line, f"unknown event kind {shown}{hint}")
                ok = False
                continue
            kind = EventKind(value)
            if kind in kinds:
                self.problem(item.line, f"event kind '{value}' is listed twice")
                ok = False
                continue
            kinds.append(kind)
        return tuple(kinds) if ok else None

    def outcome(self, node: YNode | None) -> Outcome | None:
        if node is None:
            return None
        value = node.value if isinstance(node, YScalar) else None
        if isinstance(value, str) and value in _OUTCOMES:
            return _OUTCOMES[value]
        self.problem(node.line, f"unknown outcome {describe(node)} (expected block or warn)")
        return None

    def choice(self, node: YNode | None, key: str, options: Mapping[str, Mode], default: Mode) -> Mode:
        if node is None:
            return default
        value = node.value if isinstance(node, YScalar) else None
        if isinstance(value, str) and value in options:
            return options[value]
        self.problem(node.line, f"unknown {key} {describe(node)} (expected {' or '.join(options)})")
        return default

    def priority(self, node: YNode | None) -> int:
        if node is None:
            return 100
        value = node.value if isinstance(node, YScalar) else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
            return value
        self.problem(node.line, f"'priority' must be a whole number from 0 to 65535, got {describe(node)}")
        return 100

    def flag(self, node: YNode | None, key: str, *, default: bool) -> bool:
        if node is None:
            return default
        value = node.value if isinstance(node, YScalar) else None
        if isinstance(value, bool):
            return value
        self.problem(node.line, f"'{key}' must be true or false, got {describe(node)}")
        return default

    def text(self, node: YNode | None, key: str) -> str:
        if node is None:
            return ""
        value = node.value if isinstance(node, YScalar) else None
        if isinstance(value, str):
            return value.strip()
        if value is None and isinstance(node, YScalar):
            return ""
        self.problem(node.line, f"'{key}' must be text, got {describe(node)}")
        return ""

    def when(
        self, node: YNode | None, on: tuple[EventKind, ...], label: str
    ) -> tuple[Condition, tuple[Read, ...]] | None:
        if node is None:
            return None
        value = node.value if isinstance(node, YScalar) else None
        if not isinstance(node, YScalar) or not isinstance(value, str):
            self.problem(node.line, f"'when' must be a condition written as text, got {describe(node)}")
            return None
        try:
            tree = ast.parse_condition(value)
        except ConditionSyntaxError as exc:
            line, column = node.text_line, exc.column
            if node.style == "|":
                before = value[: exc.column - 1]
                line += before.count("\n")
                column = exc.column - (before.rfind("\n") + 1)
            self.problem(line, f"when: syntax error at column {column}: {exc.message}")
            return None
        result = check_condition(tree, on, self.ctx.counters, self.ctx.lists)
        for message in result.problems:
            self.problem(node.text_line, message)
        if result.condition is None:
            return None
        tests = cost_per_kind(nnf(result.condition))
        if tests > MAX_TESTS_PER_SHARD:
            self.problem(
                node.text_line,
                f"{label} needs {tests} condition tests per event kind after expanding 'or' and "
                f"'in [..]' (durable_rules evaluates at most {MAX_TESTS_PER_SHARD} at once): "
                "split the rule or simplify the condition",
            )
            return None
        return result.condition, result.reads

    def reason(self, node: YNode | None, reads: tuple[Read, ...] | None) -> tuple[Template, Template] | None:
        if node is None:
            return None
        if not isinstance(node, YMap):
            self.problem(node.line, f"'reason' must have 'zh' and 'en' texts, got {describe(node)}")
            return None
        for key, _ in node.items:
            if key.value not in REASON_KEYS:
                self.unknown_key(key, REASON_KEYS, "in reason")
        templates: list[Template] = []
        for language in REASON_KEYS:
            text_node = node.get(language)
            if text_node is None:
                self.problem(node.line, f"reason has no '{language}' text")
                continue
            value = text_node.value if isinstance(text_node, YScalar) else None
            if value is None or (isinstance(value, str) and not value.strip()):
                self.problem(text_node.line, f"reason.{language} is empty")
                continue
            if not isinstance(value, str):
                self.problem(text_node.line, f"reason.{language} must be text, got {describe(text_node)}")
                continue
            try:
                template = parse_template(value.strip())
            except TemplateError as exc:
                self.problem(text_node.line, f"reason.{language}: {exc}")
                continue
            if reads is not None:
                fillable = [str(r) for r in reads if not _is_list_check(r)]
                for placeholder in template.placeholders:
                    if placeholder.name not in fillable:
                        it_reads = f"it reads: {', '.join(fillable)}" if fillable else "it reads no field or counter"
                        self.problem(
                            text_node.line,
                            f"reason.{language} placeholder '{{{placeholder.name}}}' is not a value "
                            f"this rule reads ({it_reads})",
                        )
                    elif placeholder.format == "money" and placeholder.name != AMOUNT:
                        self.problem(
                            text_node.line,
                            f"reason.{language} placeholder '{{{placeholder.name}:money}}': the 'money' format"
                            f" shows a transfer's own amount, {{{AMOUNT}:money}}; show other sums with ':yuan'",
                        )
                    elif placeholder.name == AMOUNT and placeholder.format != "money":
                        self.problem(
                            text_node.line,
                            f"reason.{language} placeholder '{{{placeholder.name}"
                            f"{':' + placeholder.format if placeholder.format else ''}}}': show a transfer's amount"
                            f" with '{{{AMOUNT}:money}}', which says the currency it was made in and its unit",
                        )
                    elif placeholder.format and not _is_number(placeholder.name, reads):
                        self.problem(
                            text_node.line,
                            f"reason.{language} placeholder '{{{placeholder.name}:{placeholder.format}}}': "
                            f"the '{placeholder.format}' format shows a number, and '{placeholder.name}' is not one",
                        )
            templates.append(template)
        if len(templates) != 2:
            return None
        return templates[0], templates[1]


def _is_list_check(read: Read) -> bool:
    return isinstance(read, ListCheck)


def _is_number(name: str, reads: Sequence[Read]) -> bool:
    """Whether the value `name` a rule reads is a number (a counter, or a number field)."""
    for read in reads:
        if str(read) == name:
            return not isinstance(read, FieldRef) or read.type is FieldType.NUMBER
    return False


def _check_message_sizes(rules: Sequence[Rule], whens: Mapping[str, tuple[str, int]], ctx: _Context) -> None:
    """Per event kind, the values all rules read must fit one durable message."""
    for kind in EventKind:
        seen: set[str] = set()
        for rule in rules:
            if not rule.enabled or kind not in rule.on:
                continue
            seen.update(values_read_on(rule, kind))
            if len(seen) > MAX_MESSAGE_VALUES:
                file, line = whens[rule.id]
                ctx.problems.append(
                    SourceProblem(
                        file,
                        line,
                        f"with rule '{rule.id}' the rules read {len(seen)} distinct values on {kind.value} "
                        f"events (fields, counters and list checks); a durable_rules message takes at most "
                        f"{MAX_MESSAGE_VALUES}",
                    )
                )
                break


def load_sources(
    sources: Sequence[SourceText],
    *,
    counters: Mapping[str, CounterInfo],
    lists: Mapping[str, ListSpec],
    also_hashed: Sequence[SourceText] = (),
) -> RuleSet:
    """Load rule files given as texts, in that order; raises SourceError listing every problem.

    `counters` are the values rules may read (service.rules.directory builds them from
    counters.yaml), `lists` the declared watchlists (service.riskdata.lists.load_lists).
    `also_hashed`: texts that are not rules but shape what the rules mean (counters.yaml,
    lists.yaml), included in the revision hash after the rule files.
    """
    ctx = _Context(counters=dict(counters), lists=dict(lists), problems=[], first_seen={})
    rules: list[Rule] = []
    labels: list[str] = []
    whens: dict[str, tuple[str, int]] = {}
    for source in sources:
        name = source.shown
        tree, problems = parse_yaml(source.text, name)
        ctx.problems.extend(problems)
        if problems:
            continue
        loader = _FileLoader(name, ctx)
        loaded = loader.load(tree)
        labels.extend(loader.labels)
        rules.extend(loaded)
        if isinstance(tree, YMap):
            _remember_when_lines(tree, name, whens)
    if not ctx.problems:
        _check_message_sizes(rules, whens, ctx)
    if ctx.problems:
        order = {source.shown: index for index, source in enumerate(sources)}
        raise SourceError(sorted(ctx.problems, key=lambda p: (order.get(p.file, -1), p.line)))
    return RuleSet(
        revision=revision_of([*sources, *also_hashed], labels),
        rules=tuple(rules),
        files=tuple(source.shown for source in sources),
        counters=ctx.counters,
        lists=ctx.lists,
    )


def _remember_when_lines(tree: YMap, file: str, out: dict[str, tuple[str, int]]) -> None:
    rules_node = tree.get("rules")
    if not isinstance(rules_node, YSeq):
        return
    for item in rules_node.items:
        if not isinstance(item, YMap):
            continue
        id_node, when_node = item.get("id"), item.get("when")
        if isinstance(id_node, YScalar) and isinstance(when_node, YScalar):
            out[str(id_node.value)] = (file, when_node.text_line)


def load_rules(
    directory: str | Path,
    *,
    counters: Mapping[str, CounterInfo],
    lists: Mapping[str, ListSpec],
) -> RuleSet:
    """Load every `*.rules.yaml` under `directory`; raises SourceError listing every problem.

    File names in problems are `directory` joined with the file's relative
    path, as given (so `rules check rules/` reports `rules/x.rules.yaml:12: ...`).
    """
    root = Path(directory)
    if not root.is_dir():
        raise SourceError([SourceProblem(str(directory), 0, "not a directory")])
    paths = find_files(root, RULES_SUFFIX)
    if not paths:
        raise SourceError([SourceProblem(str(directory), 0, f"no rule files (*{RULES_SUFFIX}) in this directory")])
    sources: list[SourceText] = []
    problems: list[SourceProblem] = []
    for path in paths:
        relative = path.relative_to(root)
        shown = str(Path(directory) / relative)
        text, read_problems = read_source(path, shown)
        problems.extend(read_problems)
        if text is not None:
            sources.append(SourceText(shown, text, relative.as_posix()))
    if problems:
        raise SourceError(problems)
    return load_sources(sources, counters=counters, lists=lists)
