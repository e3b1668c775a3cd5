"""The monitoring shipped in deploy/ stays true to the service: Prometheus' promtool checks the alerting
rules and runs their unit tests (every alert shown firing in one case and silent in another), the
Grafana dashboard matches its schema, and every metric, label and label value the dashboard's and the
alerts' PromQL name is one the service exports (read from the metric definitions in service/).

promtool is Debian's package prometheus, installed by `make setup`. A missing promtool fails the test:
it is part of `make test`.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import EventKind, Outcome
from service.rules.reload import RESULTS
from service.server.app import BREAKERS_COMPONENT, REDIS_COMPONENT, RULES_COMPONENT
from service.server.metrics import Metrics
from tests.conftest import REPO

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "riskgate-dashboard.json"
DASHBOARD_SCHEMA = REPO / "deploy" / "grafana" / "dashboard.schema.json"
SERVICE = REPO / "service"

# Labels Prometheus adds to every scraped series, and the series it makes itself.
TARGET_LABELS = frozenset({"job", "instance"})
PROMETHEUS_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}
# The sample names prometheus_client exposes for one metric family, by its type.
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
}
_METRIC_TYPES = frozenset(_SUFFIXES)
SEVERITIES = frozenset({"critical", "warning", "info"})


# --- the metrics the service defines --------------------------------------------------------------


@dataclass(frozen=True)
class MetricDefinition:
    family: str  # as passed to prometheus_client (`riskgate_requests`)
    kind: str  # Counter, Gauge, Histogram, Summary, Info
    labels: frozenset[str]
    where: str  # file:line

    def sample_names(self) -> dict[str, frozenset[str]]:
        """Each exposed series name with the labels it may carry."""
        base = self.family.removesuffix("_total") if self.kind == "Counter" else self.family
        names: dict[str, frozenset[str]] = {}
        for suffix in _SUFFIXES[self.kind]:
            extra = {"le"} if suffix == "_bucket" else {"quantile"} if self.kind == "Summary" and not suffix else set()
            names[base + suffix] = self.labels | TARGET_LABELS | extra
        return names


def _prometheus_names(tree: ast.Module) -> dict[str, str]:
    """The local names a module binds to prometheus_client's metric types (`Counter` -> Counter)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            for alias in node.names:
                if alias.name in _METRIC_TYPES:
                    bound[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import) and any(a.name == "prometheus_client" for a in node.names):
            raise AssertionError("`import prometheus_client`: import the metric types by name, so this test finds them")
    return bound


def _definitions_in(path: Path) -> Iterator[MetricDefinition]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bound = _prometheus_names(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in bound):
            continue
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        kind = bound[node.func.id]
        name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        assert isinstance(name, ast.Constant) and isinstance(name.value, str), f"{where}: a metric name must be literal"
        labels: ast.expr | None = node.args[2] if len(node.args) > 2 else None
        labels = next((k.value for k in node.keywords if k.arg == "labelnames"), labels)
        names: list[str] = []
        if labels is not None:
            assert isinstance(labels, ast.List | ast.Tuple), f"{where}: label names must be a literal list"
            for element in labels.elts:
                assert isinstance(element, ast.Constant) and isinstance(element.value, str), where
                names.append(element.value)
        yield MetricDefinition(name.value, kind, frozenset(names), where)


def _info_labels() -> frozenset[str]:
    """An Info's labels are the keys it is given at run time: the serving revision's."""
    metrics = Metrics()
    metrics.set_revision("r")
    return frozenset(
        label
        for family in metrics.registry.collect()
        if family.type == "info"
        for sample in family.samples
        for label in sample.labels
    )


def _service_modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "_gen" not in p.relative_to(SERVICE).parts)


def service_definitions() -> list[MetricDefinition]:
    """Every metric the service defines, wherever in service/ it is."""
    info_labels = _info_labels()
    return [
        MetricDefinition(d.family, d.kind, info_labels, d.where) if d.kind == "Info" else d
        for path in _service_modules()
        for d in _definitions_in(path)
    ]


def _series_of(definitions: list[MetricDefinition]) -> dict[str, frozenset[str]]:
    """Every series name exported, with its possible labels."""
    series: dict[str, frozenset[str]] = {}
    for definition in definitions:
        for name, labels in definition.sample_names().items():
            assert name not in series, f"{definition.where}: {name} is defined twice"
            series[name] = labels
    return series


DEFINITIONS = service_definitions()
SERIES = _series_of(DEFINITIONS)
ALL_SERIES = {**SERIES, **{name: labels | TARGET_LABELS for name, labels in PROMETHEUS_SERIES.items()}}
ALL_LABELS = frozenset().union(*ALL_SERIES.values())
# The values some labels can take, from where the service makes them.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "component": frozenset({REDIS_COMPONENT, RULES_COMPONENT, BREAKERS_COMPONENT}),
    "outcome": frozenset(o.label for o in Outcome),
    "event_kind": frozenset({*(k.value for k in EventKind), "unknown"}),
    "result": frozenset(RESULTS),
    "code": frozenset(c.name for c in grpc.StatusCode),
    "rpc": frozenset(pb.DESCRIPTOR.services_by_name["Screening"].methods_by_name),
    "job": frozenset({"riskgate"}),  # the scrape job alerts.yml expects
}


def test_the_metric_definitions_are_all_found() -> None:
    """The source scan above sees the families the service's registry holds, no more, no fewer."""
    registered = {(family.name, family.type) for family in Metrics().registry.collect()}
    scanned = {(d.family.removesuffix("_total"), d.kind.lower()) for d in DEFINITIONS}
    assert scanned == registered
    assert SERIES["riskgate_request_duration_seconds_bucket"] == {"rpc", "le", "job", "instance"}
    assert SERIES["riskgate_requests_total"] == {"event_kind", "outcome", "job", "instance"}


# --- PromQL, read as far as names go --------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<variable>\$\{?\w+\}?)
    | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<operator>=~|!~|!=|==|>=|<=|[-+*/%^=<>,(){}])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
# Aggregations may take their `by (...)` before the parenthesis: `sum by (job) (x)`.
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_MATCH_OPERATORS = frozenset({"=", "!=", "=~", "!~"})


@dataclass(frozen=True)
class Matcher:
    label: str
    operator: str
    value: str


@dataclass
class Query:
    """The names one PromQL expression uses: its selectors and the labels it groups or matches on."""

    text: str
    selectors: list[tuple[str, list[Matcher]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match is not None, f"cannot read PromQL at {text[position:]!r} in {text!r}"
        assert match.lastgroup is not None
        if match.lastgroup != "space":
            found.append((match.lastgroup, match.group()))
        position = match.end()
    return found


def _unquote(token: str) -> str:
    """A PromQL string's value (Go's escapes, which JSON shares for what a label value holds)."""
    if token.startswith("`"):
        return token[1:-1]
    if token.startswith("'"):
        token = '"' + token[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    return str(json.loads(token))


def parse_promql(text: str) -> Query:
    query = Query(text)
    tokens = _tokens(text)
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "name" and value in _GROUPING:
            if following == "(":
                i += 2
                while tokens[i][1] != ")":
                    if tokens[i][0] == "name":
                        query.grouping.add(tokens[i][1])
                    i += 1
            i += 1
            continue
        if kind == "name" and following != "(" and value not in _KEYWORDS | _AGGREGATIONS:
            matchers: list[Matcher] = []
            i += 1
            if following == "{":
                i += 1
                while tokens[i][1] != "}":
                    label, operator, quoted = tokens[i][1], tokens[i + 1][1], tokens[i + 2]
                    assert tokens[i][0] == "name", f"{text!r}: a label name expected, found {label!r}"
                    assert operator in _MATCH_OPERATORS, f"{text!r}: {operator!r} after label {label}"
                    assert quoted[0] == "string", f"{text!r}: label {label} needs a quoted value"
                    matchers.append(Matcher(label, operator, _unquote(quoted[1])))
                    i += 3
                    if tokens[i][1] == ",":
                        i += 1
                i += 1
            query.selectors.append((value, matchers))
            continue
        assert value != "{", f"{text!r}: a selector without a metric name"
        i += 1
    return query


def test_the_promql_reader() -> None:
    query = parse_promql(
        'histogram_quantile(0.99, sum by (job, le) (rate(riskgate_request_duration_seconds_bucket{job="riskgate",'
        ' code!~"A|B"}[5m] offset 1h))) > 1e3 and on (instance) up == bool 0 or vector(0)'
    )
    assert query.selectors == [
        (
            "riskgate_request_duration_seconds_bucket",
            [Matcher("job", "=", "riskgate"), Matcher("code", "!~", "A|B")],
        ),
        ("up", []),
    ]
    assert query.grouping == {"job", "le", "instance"}
    templated = parse_promql('sum(rate(x_total{instance=~"$instance"}[$__rate_interval])) / ${y}')
    assert templated.selectors == [("x_total", [Matcher("instance", "=~", "$instance")])]


# --- what deploy/ holds ---------------------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alert_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    return tests


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _dashboard_queries() -> list[tuple[str, Query]]:
    """(where, query) of every PromQL the dashboard runs: panel targets and variable queries."""
    dashboard = _dashboard()
    found = [
        (f"panel {panel['title']!r} {target['refId']}", parse_promql(target["expr"]))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match is not None, variable["name"]
        query = parse_promql(match.group(1))
        query.grouping.add(match.group(2))
        found.append((f"variable {variable['name']}", query))
    return found


def _alert_queries() -> list[tuple[str, Query]]:
    return [(f"alert {rule['alert']}", parse_promql(rule["expr"])) for rule in _alert_rules()]


def _test_series() -> list[tuple[str, Query]]:
    return [
        (f"alerts.test.yml {test['name']!r}", parse_promql(series["series"]))
        for test in _alert_tests()
        for series in test["input_series"]
    ]


def _problems(queries: list[tuple[str, Query]]) -> list[str]:
    problems: list[str] = []
    for where, query in queries:
        for metric, matchers in query.selectors:
            if metric not in ALL_SERIES:
                problems.append(f"{where}: {metric} is no metric the service exports")
                continue
            for matcher in matchers:
                if matcher.label not in ALL_SERIES[metric]:
                    problems.append(f"{where}: {metric} has no label {matcher.label}")
                allowed = LABEL_VALUES.get(matcher.label) if metric in SERIES else None  # `up` has every job
                if allowed is None or "$" in matcher.value:
                    continue
                values = matcher.value.split("|") if matcher.operator in {"=~", "!~"} else [matcher.value]
                for value in values:
                    if value not in allowed:
                        problems.append(f"{where}: {matcher.label}={value!r} is none of {sorted(allowed)}")
        for label in query.grouping - ALL_LABELS:
            problems.append(f"{where}: groups or matches on {label}, which no metric has")
    return problems


def test_the_alerts_name_only_metrics_and_labels_the_service_exports() -> None:
    assert _problems(_alert_queries()) == []


def test_the_dashboard_names_only_metrics_and_labels_the_service_exports() -> None:
    assert _problems(_dashboard_queries()) == []


def test_the_alert_tests_feed_only_series_the_service_exports() -> None:
    assert _problems(_test_series()) == []


def test_the_checks_catch_a_misnamed_metric_label_or_value() -> None:
    bad = parse_promql('sum by (kind) (rate(riskgate_request_total{outcome="blocked", rpc="Screen", kind="x"}[5m]))')
    good = parse_promql('riskgate_requests_total{outcome="block", event_kind=~"transfer|sim_sale"}')
    assert _problems([("bad", bad), ("good", good)]) == [
        "bad: riskgate_request_total is no metric the service exports",
        "bad: groups or matches on kind, which no metric has",
    ]
    wrong = parse_promql('riskgate_requests_total{outcome="blocked", rpc="Screen", event_kind!~"transfer|sms"}')
    assert _problems([("wrong", wrong)]) == [
        "wrong: outcome='blocked' is none of ['allow', 'block', 'unspecified', 'warn']",
        "wrong: riskgate_requests_total has no label rpc",
        "wrong: event_kind='sms' is none of ['card_opening', 'closure', 'sim_sale', 'transfer', 'unknown']",
    ]


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """A metric added to the service without a panel is a gap an operator finds during an incident."""
    shown = {metric for _, query in _dashboard_queries() for metric, _ in query.selectors}
    families = {re.sub(r"_(total|created|bucket|sum|count|info)$", "", name) for name in shown}
    exported = {re.sub(r"_(total|created|bucket|sum|count|info)$", "", name) for name in SERIES}
    assert exported - families == set()


def test_metrics_are_defined_only_where_this_test_reads_them() -> None:
    """Every module importing prometheus_client's metric types is scanned (a new one is too, by rglob);
    this pins that the service keeps its metrics in one place, with no personal data in any label."""
    modules = {
        str(path.relative_to(REPO))
        for path in _service_modules()
        if _prometheus_names(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert modules == {"service/server/metrics.py"}
    personal = re.compile(r"(^|_)(id|id_number|phone|account|name|device|ip|payee|payer|applicant)(_|$)")
    assert {label for label in ALL_LABELS if personal.search(label)} == set()


# --- the alerts -----------------------------------------------------------------------------------


def test_every_alert_is_shown_firing_and_silent() -> None:
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    firing: set[str] = set()
    silent: set[str] = set()
    for test in _alert_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert (firing | silent) - set(names) == set(), "alerts.test.yml tests alerts that alerts.yml lacks"
    assert set(names) - firing == set(), "never shown firing"
    assert set(names) - silent == set(), "never shown silent"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Monitoring: dashboard and alerts\n", 1)[1].split("\n## ", 1)[0]
    for rule in _alert_rules():
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert f"`{name}`" in section, f"{name} is not explained in README.md's Monitoring section"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("no promtool on PATH: `make setup` installs it (Debian's package prometheus)", pytrace=False)
    return found


def _run(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_alerting_rules(promtool: str) -> None:
    output = _run(promtool, "check", "rules", str(ALERTS.relative_to(REPO)))
    assert f"SUCCESS: {len(_alert_rules())} rules found" in output, output


def test_promtool_runs_the_alerts_unit_tests(promtool: str) -> None:
    output = _run(promtool, "test", "rules", str(ALERT_TESTS.relative_to(REPO)))
    assert "SUCCESS" in output, output


# --- the dashboard --------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(DASHBOARD_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _schema_errors(dashboard: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(_schema())
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(dashboard)]


def test_the_dashboard_matches_its_schema() -> None:
    assert _schema_errors(_dashboard()) == []


def test_the_schema_refuses_what_grafana_would_show_broken() -> None:
    dashboard = _dashboard()
    query_panel = next(p for p in dashboard["panels"] if p["type"] != "row")
    query_panel["targets"][0]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    del query_panel["targets"][0]["expr"]
    query_panel["gridPos"]["w"] = 25
    errors = _schema_errors(dashboard)
    assert any("'expr' is a required property" in e for e in errors), errors
    assert any("'${datasource}' was expected" in e for e in errors), errors
    assert any("25 is greater than the maximum of 24" in e for e in errors), errors


def test_the_panels_fit_the_grid_without_overlapping() -> None:
    dashboard = _dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_every_dashboard_query_follows_the_job_and_replica_variables() -> None:
    variables = {variable["name"] for variable in _dashboard()["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for where, query in _dashboard_queries():
        for metric, matchers in query.selectors:
            used = {(m.label, m.operator, m.value) for m in matchers}
            assert ("job", "=~", "$job") in used or where == "variable job", f"{where}: {metric} ignores $job"
            if where.startswith("panel"):
                assert ("instance", "=~", "$instance") in used, f"{where}: {metric} ignores $instance"
        refs = {r for r in re.findall(r"\$\{?(\w+)\}?", query.text) if not r.startswith("__")}
        assert refs <= variables, f"{where}: unknown variables {refs - variables}"
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= ALL_LABELS, f"{panel['title']!r}: legend names {legend - ALL_LABELS}"
