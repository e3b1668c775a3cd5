"""Test cases beside the rules (`*.cases.yaml`), and the runner behind `riskgate rules test`.

    cases:
      - name: payee on the police fraud list is blocked
        event: transfer
        facts:                          # field values; omitted fields are absent
          transfer.amount_fen: 500000
          payer.age: 35                 # person.age is filled from payer.age
        counters:
          payers_into_1h: 2
        lists:                          # list -> fields whose value is on it
          fraud_accounts: [transfer.payee_account]
        absent: [transfer.device_id]    # identifiers this event does not have
        expect:
          outcome: block                # allow | warn | block
          fired: [T15_fraud_payee]      # exact set of rules that match, shadow ones included
          reasons:                      # optional: exact texts of fired rules' reasons (zh, en or both)
            T15_fraud_payee: {en: "The payee account is ... You may appeal with your ID at this bank ..."}

Facts name fields of `service.pipeline.facts.FIELDS` for the case's event kind, never
identifiers (those appear only through `lists`). As `facts()` does, the
screened person's fields are mirrored between their role (`applicant.*`,
`buyer.*`, `payer.*`, `holder.*`) and `person.*`. Every list lookup the
rules make on the event's kind is a miss unless listed under `lists`, or
absent if its field is under `absent`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.domain import EventKind, Outcome
from service.errors import SourceError, SourceProblem
from service.pipeline.facts import FIELDS, FieldType, Scalar
from service.pipeline.outcome import outcome_of
from service.riskdata.lists import ListSpec
from service.rules.check import choice_problem, list_kind_problem, unknown_list_problem
from service.rules.compiler import compile_ruleset
from service.rules.engine import CompiledRuleset, build_ruleset
from service.rules.loader import CASES_SUFFIX, find_files, load_rules, read_source
from service.rules.model import CounterInfo, RuleSet
from service.suggest import suggest
from service.yamlsrc import YMap, YNode, YScalar, YSeq, describe, parse_yaml

CASE_KEYS = ("name", "event", "facts", "counters", "lists", "absent", "expect")
EXPECT_KEYS = ("outcome", "fired", "reasons")
TEXT_KEYS = ("zh", "en")
SUBJECT_ROLE = {
    EventKind.CARD_OPENING: "applicant",
    EventKind.SIM_SALE: "buyer",
    EventKind.TRANSFER: "payer",
    EventKind.CLOSURE: "holder",
}
_OUTCOMES = {"allow": Outcome.ALLOW, "warn": Outcome.WARN, "block": Outcome.BLOCK}


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    file: str
    line: int
    kind: EventKind
    facts: Mapping[str, Scalar]
    counters: Mapping[str, int | float]
    hits: frozenset[tuple[str, str]]
    absent: frozenset[str]
    expected_outcome: Outcome
    expected_fired: frozenset[str]
    # (rule id, language) -> the exact reason text expected, for the rules the case pins
    expected_texts: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def list_hits(self, checks: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        return {check: check in self.hits for check in checks if check[1] not in self.absent}


@dataclass(frozen=True, slots=True)
class CaseFailure:
    case: Case
    outcome: Outcome
    fired: frozenset[str]
    texts: Mapping[tuple[str, str], str] = field(default_factory=dict)  # the pinned texts that differ, as said

    def render(self) -> str:
        case = self.case
        lines = [f"FAIL {case.file}:{case.line}: {case.name}"]
        if self.outcome != case.expected_outcome:
            lines.append(f"  outcome: expected {case.expected_outcome.label}, got {self.outcome.label}")
        if self.fired != case.expected_fired:
            lines.append(f"  fired:   expected [{', '.join(sorted(case.expected_fired))}]")
            lines.append(f"           got      [{', '.join(sorted(self.fired))}]")
            lines.extend(
                f"           - {rule_id} (expected, did not fire)"
                for rule_id in sorted(case.expected_fired - self.fired)
            )
            lines.extend(
                f"           + {rule_id} (fired, not expected)" for rule_id in sorted(self.fired - case.expected_fired)
            )
        for (rule_id, language), text in self.texts.items():
            label = f"  reason {rule_id} {language}: "
            lines.append(f"{label}expected {case.expected_texts[rule_id, language]}")
            lines.append(f"{' ' * len(label)}got      {text}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CaseReport:
    cases: tuple[Case, ...]
    failures: tuple[CaseFailure, ...]
    never_fired: tuple[str, ...]  # enabled rules that no case fires
    never_quiet: tuple[str, ...]  # enabled rules with no case of their kinds where they stay quiet

    @property
    def ok(self) -> bool:
        return not self.failures


class _CaseLoader:
    def __init__(self, file: str, ruleset: RuleSet, lists: Mapping[str, ListSpec]) -> None:
        self.file = file
        self.ruleset = ruleset
        self.lists = lists
        self.rule_ids = [r.id for r in ruleset.rules]
        self.problems: list[SourceProblem] = []

    def problem(self, line: int, text: str) -> None:
        self.problems.append(SourceProblem(self.file, line, text))

    def unknown_keys(self, node: YMap, allowed: Sequence[str], where: str) -> None:
        for key, _ in node.items:
            if key.value not in allowed:
                guess = suggest(str(key.value), list(allowed))
                hint = f", did you mean '{guess}'?" if guess else f" (allowed: {', '.join(allowed)})"
                self.problem(key.line, f"unknown key '{key.value}' {where}{hint}")

    def load(self, tree: YNode | None) -> list[Case]:
        if tree is None:
            return []
        if not isinstance(tree, YMap):
            self.problem(tree.line, "expected a mapping with 'cases:' at the top level")
            return []
        self.unknown_keys(tree, ("cases",), "at the top level")
        node = tree.get("cases")
        if node is None:
            self.problem(tree.line, "missing 'cases:' (a list of cases)")
            return []
        if not isinstance(node, YSeq):
            self.problem(node.line, f"'cases' must be a list, got {describe(node)}")
            return []
        cases = []
        for index, item in enumerate(node.items, start=1):
            case = self.case(item, index)
            if case is not None:
                cases.append(case)
        return cases

    def case(self, node: YNode, index: int) -> Case | None:
        if not isinstance(node, YMap):
            self.problem(node.line, f"case #{index} must be a mapping, got {describe(node)}")
            return None
        before = len(self.problems)
        self.unknown_keys(node, CASE_KEYS, "in case")
        name_node = node.get("name")
        name = name_node.value if isinstance(name_node, YScalar) else None
        if not isinstance(name, str) or not name.strip():
            self.problem(node.line, f"case #{index} needs a 'name'")
            name = f"#{index}"
        kind = self.kind(node.get("event"), node.line)
        facts = self.facts(node.get("facts"), kind) if kind else {}
        counters = self.counters(node.get("counters"))
        hits = self.hits(node.get("lists"), kind) if kind else frozenset()
        absent = self.absent(node.get("absent"), kind) if kind else frozenset()
        expect = self.expect(node.get("expect"), node.line)
        if len(self.problems) > before or kind is None or expect is None:
            return None
        return Case(
            name=name,
            file=self.file,
            line=node.line,
            kind=kind,
            facts={"event": kind.value, **facts},
            counters=counters,
            hits=hits,
            absent=absent,
            expected_outcome=expect[0],
            expected_fired=expect[1],
            expected_texts=expect[2],
        )

    def kind(self, node: YNode | None, line: int) -> EventKind | None:
        if node is None:
            self.problem(line, "the case has no 'event' (card_opening, sim_sale, transfer or closure)")
            return None
        value = node.value if isinstance(node, YScalar) else None
        names = [k.value for k in EventKind]
        if isinstance(value, str) and value in names:
            return EventKind(value)
        guess = suggest(value, names) if isinstance(value, str) else None
        hint = f", did you mean '{guess}'?" if guess else f" (expected one of: {', '.join(names)})"
        self.problem(node.line, f"unknown event kind {describe(node)}{hint}")
        return None

    def facts(self, node: YNode | None, kind: EventKind) -> dict[str, Scalar]:
        if node is None:
            return {}
        if not isinstance(node, YMap):
            self.problem(node.line, f"'facts' must be a mapping of field: value, got {describe(node)}")
            return {}
        out: dict[str, Scalar] = {}
        lines: dict[str, int] = {}
        for key, value_node in node.items:
            name = str(key.value)
            spec = FIELDS.get(name)
            if name == "event":
                self.problem(key.line, "set the event kind with 'event:', not under 'facts'")
                continue
            if spec is None:
                guess = suggest(name, [n for n, s in FIELDS.items() if kind in s.kinds])
                hint = f", did you mean '{guess}'?" if guess else ""
                self.problem(key.line, f"unknown field '{name}'{hint}")
                continue
            if kind not in spec.kinds:
                self.problem(key.line, f"field '{name}' does not exist on {kind.value} events")
                continue
            if spec.type is FieldType.IDENTIFIER:
                self.problem(key.line, f"'{name}' is an identifier: give its list memberships under 'lists'")
                continue
            value = value_node.value if isinstance(value_node, YScalar) else None
            if not _type_ok(spec.type, value):
                self.problem(value_node.line, f"'{name}' must be {_TYPE_TEXT[spec.type]}, got {describe(value_node)}")
                continue
            assert value is not None
            problem = choice_problem(name, value) if isinstance(value, str) else None
            if problem is not None:
                self.problem(value_node.line, problem)
                continue
            out[name] = value
            lines[name] = key.line
        role = SUBJECT_ROLE[kind]
        for name in list(out):
            for prefix, other in (("person.", f"{role}."), (f"{role}.", "person.")):
                if name.startswith(prefix):
                    twin = other + name[len(prefix) :]
                    if twin in out and out[twin] != out[name]:
                        if prefix == "person.":
                            self.problem(lines[name], f"'{name}' differs from '{twin}' (the {role} is the person)")
                    else:
                        out.setdefault(twin, out[name])
        return out

    def counters(self, node: YNode | None) -> dict[str, int | float]:
        if node is None:
            return {}
        if not isinstance(node, YMap):
            self.problem(node.line, f"'counters' must be a mapping of counter: value, got {describe(node)}")
            return {}
        out: dict[str, int | float] = {}
        for key, value_node in node.items:
            name = str(key.value)
            if name not in self.ruleset.counters:
                guess = suggest(name, list(self.ruleset.counters))
                hint = f", did you mean '{guess}'?" if guess else ""
                self.problem(key.line, f"unknown counter '{name}'{hint}")
                continue
            value = value_node.value if isinstance(value_node, YScalar) else None
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.problem(value_node.line, f"counter '{name}' must be a number, got {describe(value_node)}")
                continue
            out[name] = value
        return out

    def hits(self, node: YNode | None, kind: EventKind) -> frozenset[tuple[str, str]]:
        if node is None:
            return frozenset()
        if not isinstance(node, YMap):
            self.problem(node.line, f"'lists' must map list names to lists of fields, got {describe(node)}")
            return frozenset()
        out: set[tuple[str, str]] = set()
        for key, fields_node in node.items:
            list_name = str(key.value)
            spec = self.lists.get(list_name)
            if spec is None:
                self.problem(key.line, unknown_list_problem(list_name, self.lists))
                continue
            for field_name, line in self.field_names(fields_node, kind, "lists"):
                if not spec.accepts_field(field_name):
                    self.problem(line, list_kind_problem(spec, field_name, (kind,)))
                    continue
                out.add((list_name, field_name))
        return frozenset(out)

    def absent(self, node: YNode | None, kind: EventKind) -> frozenset[str]:
        if node is None:
            return frozenset()
        return frozenset(name for name, _ in self.field_names(node, kind, "absent"))

    def field_names(self, node: YNode, kind: EventKind, where: str) -> list[tuple[str, int]]:
        if not isinstance(node, YSeq):
            self.problem(node.line, f"'{where}' needs a list of field names, got {describe(node)}")
            return []
        out = []
        for item in node.items:
            name = item.value if isinstance(item, YScalar) else None
            spec = FIELDS.get(name) if isinstance(name, str) else None
            if not isinstance(name, str) or spec is None:
                guess = suggest(name, list(FIELDS)) if isinstance(name, str) else None
                hint = f", did you mean '{guess}'?" if guess else ""
                self.problem(item.line, f"unknown field {describe(item)}{hint}")
                continue
            if kind not in spec.kinds:
                self.problem(item.line, f"field '{name}' does not exist on {kind.value} events")
                continue
            if spec.type not in (FieldType.IDENTIFIER, FieldType.STRING):
                self.problem(item.line, f"'{name}' is not an identifier or string field")
                continue
            out.append((name, item.line))
        return out

    def expect(
        self, node: YNode | None, line: int
    ) -> tuple[Outcome, frozenset[str], dict[tuple[str, str], str]] | None:
        if node is None:
            self.problem(line, "the case has no 'expect' (outcome and fired rules)")
            return None
        if not isinstance(node, YMap):
            self.problem(node.line, f"'expect' must have 'outcome' and 'fired', got {describe(node)}")
            return None
        self.unknown_keys(node, EXPECT_KEYS, "in expect")
        outcome_node = node.get("outcome")
        outcome: Outcome | None = None
        if outcome_node is None:
            self.problem(node.line, "expect has no 'outcome' (allow, warn or block)")
        else:
            value = outcome_node.value if isinstance(outcome_node, YScalar) else None
            if isinstance(value, str) and value in _OUTCOMES:
                outcome = _OUTCOMES[value]
            else:
                self.problem(
                    outcome_node.line, f"unknown outcome {describe(outcome_node)} (expected allow, warn or block)"
                )
        fired_node = node.get("fired")
        fired: set[str] = set()
        if fired_node is None:
            self.problem(node.line, "expect has no 'fired' (the rule ids that match; [] for none)")
            return None
        if not isinstance(fired_node, YSeq):
            self.problem(fired_node.line, f"'fired' must be a list of rule ids, got {describe(fired_node)}")
            return None
        for item in fired_node.items:
            rule_id = item.value if isinstance(item, YScalar) else None
            if isinstance(rule_id, int) and not isinstance(rule_id, bool):
                rule_id = str(rule_id)
            if not isinstance(rule_id, str) or rule_id not in self.rule_ids:
                guess = suggest(rule_id, self.rule_ids) if isinstance(rule_id, str) else None
                hint = f", did you mean '{guess}'?" if guess else ""
                self.problem(item.line, f"no rule has the id {describe(item)}{hint}")
                continue
            fired.add(rule_id)
        texts = self.texts(node.get("reasons"), fired)
        if outcome is None:
            return None
        return outcome, frozenset(fired), texts

    def texts(self, node: YNode | None, fired: set[str]) -> dict[tuple[str, str], str]:
        """`reasons: {RULE_ID: {zh: text, en: text}}`: the exact texts of rules the case expects to fire."""
        if node is None:
            return {}
        if not isinstance(node, YMap):
            self.problem(node.line, f"'reasons' must map rule ids to {{zh: ..., en: ...}}, got {describe(node)}")
            return {}
        out: dict[tuple[str, str], str] = {}
        for key, texts_node in node.items:
            rule_id = str(key.value)
            if rule_id not in fired:
                where = "is not in 'fired'" if rule_id in self.rule_ids else "is not a rule id"
                self.problem(key.line, f"reasons: '{rule_id}' {where} (only the texts of expected rules are pinned)")
                continue
            if not isinstance(texts_node, YMap) or not texts_node.items:
                self.problem(texts_node.line, f"reasons.{rule_id} must have a 'zh' or 'en' text, or both")
                continue
            self.unknown_keys(texts_node, TEXT_KEYS, f"in reasons.{rule_id}")
            for language in TEXT_KEYS:
                text_node = texts_node.get(language)
                if text_node is None:
                    continue
                value = text_node.value if isinstance(text_node, YScalar) else None
                if not isinstance(value, str) or not value.strip():
                    shown = describe(text_node)
                    self.problem(text_node.line, f"reasons.{rule_id}.{language} must be text, got {shown}")
                    continue
                out[rule_id, language] = value.strip()
        return out


_TYPE_TEXT = {
    FieldType.NUMBER: "a number",
    FieldType.BOOL: "true or false",
    FieldType.STRING: "a string (quote codes: '44')",
    FieldType.IDENTIFIER: "an identifier",
}


def _type_ok(ftype: FieldType, value: object) -> bool:
    if ftype is FieldType.NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if ftype is FieldType.BOOL:
        return isinstance(value, bool)
    return isinstance(value, str)


def load_cases(directory: str | Path, ruleset: RuleSet) -> tuple[Case, ...]:
    """Every case in `*.cases.yaml` under `directory`, validated against `ruleset`; raises SourceError."""
    root = Path(directory)
    problems: list[SourceProblem] = []
    cases: list[Case] = []
    for path in find_files(root, CASES_SUFFIX):
        shown = str(Path(directory) / path.relative_to(root))
        text, read_problems = read_source(path, shown)
        problems.extend(read_problems)
        if text is None:
            continue
        tree, yaml_problems = parse_yaml(text, shown)
        problems.extend(yaml_problems)
        if yaml_problems:
            continue
        loader = _CaseLoader(shown, ruleset, ruleset.lists)
        cases.extend(loader.load(tree))
        problems.extend(sorted(loader.problems, key=lambda p: p.line))
    if problems:
        raise SourceError(problems)
    return tuple(cases)


def run_cases(compiled: CompiledRuleset, cases: Sequence[Case]) -> CaseReport:
    failures: list[CaseFailure] = []
    fired_somewhere: set[str] = set()
    quiet_somewhere: set[str] = set()
    for case in cases:
        reasons = compiled.evaluate(case.facts, case.counters, case.list_hits(compiled.list_checks_for(case.kind)))
        fired = frozenset(r.rule_id for r in reasons)
        outcome = outcome_of(reasons)
        fired_somewhere |= fired
        quiet_somewhere |= {r.id for r in compiled.rules.values() if case.kind in r.on and r.id not in fired}
        said = {(r.rule_id, "zh"): r.message_zh for r in reasons} | {(r.rule_id, "en"): r.message_en for r in reasons}
        texts = {
            key: said.get(key, "(no such reason)")
            for key, expected in case.expected_texts.items()
            if said.get(key) != expected
        }
        if outcome != case.expected_outcome or fired != case.expected_fired or texts:
            failures.append(CaseFailure(case, outcome, fired, texts))
    rule_ids = [r.id for r in compiled.rules.values()]
    return CaseReport(
        cases=tuple(cases),
        failures=tuple(failures),
        never_fired=tuple(i for i in rule_ids if i not in fired_somewhere),
        never_quiet=tuple(i for i in rule_ids if i not in quiet_somewhere),
    )


def run_directory_cases(
    directory: str | Path,
    *,
    counters: Mapping[str, CounterInfo],
    lists: Mapping[str, ListSpec],
) -> CaseReport:
    """Load the rules and cases under `directory`, run every case; raises SourceError on invalid files."""
    ruleset = load_rules(directory, counters=counters, lists=lists)
    cases = load_cases(directory, ruleset)
    compiled = build_ruleset(compile_ruleset(ruleset))
    try:
        return run_cases(compiled, cases)
    finally:
        compiled.close()
