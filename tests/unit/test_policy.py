"""Tests for service.server.access.policy: parsing the access policy, its problems, and certificate matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from service._gen.riskgate.v1 import admin_pb2, dispositions_pb2, screening_pb2
from service.errors import SourceError
from service.server.access.policy import (
    AUTHENTICATED_METHODS,
    LOCAL_DEFAULT,
    METHOD_PERMISSIONS,
    OPEN_METHODS,
    PERMISSIONS,
    Policy,
    PrincipalSpec,
    load_policy,
    parse_policy,
)

FILE = "policy.yaml"

GOOD = """\
roles:
  outlet: [screen]
  back_office: [screen, lists.read, lists.write, decisions.read]
  rules_admin: [rules.admin]
principals:
  - name: branch-counters
    certificate: "*.counter.bank.example"
    roles: [outlet]
  - name: risk-office
    token: risk-office-token
    roles: [back_office, rules_admin]
  - name: ops-console
    local: true
    roles: [back_office]
"""


def problems_of(text: str) -> list[str]:
    _, problems = parse_policy(text, FILE)
    return [str(problem) for problem in problems]


def good_policy() -> Policy:
    policy, problems = parse_policy(GOOD, FILE)
    assert problems == []
    return policy


# --- a valid policy ----------------------------------------------------------


def test_a_valid_policy_parses_without_problems() -> None:
    policy = good_policy()
    assert policy.source == FILE
    assert dict(policy.roles) == {
        "outlet": frozenset({"screen"}),
        "back_office": frozenset({"screen", "lists.read", "lists.write", "decisions.read"}),
        "rules_admin": frozenset({"rules.admin"}),
    }
    assert [p.name for p in policy.principals] == ["branch-counters", "risk-office", "ops-console"]
    assert [p.line for p in policy.principals] == [6, 9, 12]


def test_each_principal_gets_the_union_of_its_roles_permissions() -> None:
    counters, office, console = good_policy().principals
    assert counters.certificate == "*.counter.bank.example"
    assert counters.token is None
    assert not counters.local
    assert counters.roles == ("outlet",)
    assert counters.permissions == frozenset({"screen"})

    assert office.token == "risk-office-token"
    assert office.certificate is None
    assert office.roles == ("back_office", "rules_admin")
    assert office.permissions == frozenset({"screen", "lists.read", "lists.write", "decisions.read", "rules.admin"})

    assert console.local
    assert console.certificate is None and console.token is None
    assert console.permissions == frozenset({"screen", "lists.read", "lists.write", "decisions.read"})
    assert "rules.admin" not in console.permissions


def test_principals_are_found_by_token_certificate_and_locality() -> None:
    policy = good_policy()
    office = policy.by_token("risk-office-token")
    assert office is not None and office.name == "risk-office"
    assert policy.by_token("risk-office") is None  # the principal's name is not its token's name
    assert policy.by_token("nobody") is None

    found = policy.by_certificate(["not-a-match.example", "till-3.counter.bank.example"])
    assert found is not None
    principal, identity = found
    assert principal.name == "branch-counters"
    assert identity == "till-3.counter.bank.example"
    assert policy.by_certificate(["risk-office.bank.example"]) is None

    local = policy.local()
    assert local is not None and local.name == "ops-console"
    assert policy.token_names() == {"risk-office-token"}


def test_a_policy_without_a_local_principal_gives_no_local_caller() -> None:
    policy, problems = parse_policy(
        "roles:\n  outlet: [screen]\nprincipals:\n  - name: a\n    token: t\n    roles: [outlet]\n", FILE
    )
    assert problems == []
    assert policy.local() is None
    assert policy.by_certificate(["anything.example"]) is None


def test_the_developer_default_lets_local_callers_do_everything() -> None:
    local = LOCAL_DEFAULT.local()
    assert local is not None
    assert local.permissions == frozenset(PERMISSIONS)
    assert LOCAL_DEFAULT.by_token("anything") is None
    assert LOCAL_DEFAULT.by_certificate(["anything.example"]) is None


def test_load_policy_reads_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    policy = load_policy(path)
    assert policy.source == str(path)
    assert [p.name for p in policy.principals] == ["branch-counters", "risk-office", "ops-console"]


def test_load_policy_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD.replace("[outlet]", "[outlets]").replace("[rules.admin]", "[rules.write]"), encoding="utf-8")
    with pytest.raises(SourceError) as raised:
        load_policy(path)
    lines = [(problem.file, problem.line) for problem in raised.value.problems]
    assert lines == [(str(path), 4), (str(path), 8)]


def test_load_policy_of_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(SourceError) as raised:
        load_policy(path)
    (problem,) = raised.value.problems
    assert problem.file == str(path)
    assert problem.line == 1
    assert problem.problem.startswith("cannot read the policy file:")


# --- mistakes, each reported as file:line: problem ---------------------------


def test_unknown_permission() -> None:
    text = "roles:\n  outlet:\n    - screen\n    - screening\nprincipals: []\n"
    assert problems_of(text) == [
        f"{FILE}:4: role 'outlet': unknown permission 'screening' "
        "(known: screen, lists.read, lists.write, rules.admin, decisions.read, dispositions.write, console)"
    ]


def test_an_unknown_permission_is_not_granted() -> None:
    text = "roles:\n  outlet: [screen, everything]\nprincipals: []\n"
    policy, problems = parse_policy(text, FILE)
    assert len(problems) == 1
    assert policy.roles["outlet"] == frozenset({"screen"})


def test_unknown_role() -> None:
    text = GOOD.replace("roles: [outlet]", "roles: [outlet, auditor]")
    assert problems_of(text) == [
        f"{FILE}:8: principal 'branch-counters': unknown role 'auditor' (declared: outlet, back_office, rules_admin)"
    ]


def test_unknown_role_when_no_roles_are_declared() -> None:
    text = "roles: {}\nprincipals:\n  - name: a\n    token: t\n    roles: [outlet]\n"
    assert problems_of(text) == [f"{FILE}:5: principal 'a': unknown role 'outlet' (declared: none)"]


def test_unknown_key_in_a_principal() -> None:
    text = GOOD.replace("    token: risk-office-token\n", "    token: risk-office-token\n    role: [outlet]\n")
    assert problems_of(text) == [f"{FILE}:11: unknown key 'role' (expected name, certificate, token, local, roles)"]


def test_unknown_key_at_the_top() -> None:
    text = GOOD + "principles: []\n"
    assert problems_of(text) == [f"{FILE}:15: unknown key 'principles' (expected roles, principals)"]


def test_a_principal_with_two_credentials() -> None:
    text = GOOD.replace(
        '    certificate: "*.counter.bank.example"\n', '    certificate: "*.c.example"\n    token: t2\n'
    )
    assert problems_of(text) == [
        f"{FILE}:6: principal 'branch-counters': give exactly one of 'certificate', 'token', 'local: true'"
    ]


def test_a_principal_with_a_token_and_local() -> None:
    text = GOOD.replace("    local: true\n", "    local: true\n    token: console-token\n")
    assert problems_of(text) == [
        f"{FILE}:12: principal 'ops-console': give exactly one of 'certificate', 'token', 'local: true'"
    ]


def test_a_principal_with_no_credential() -> None:
    text = GOOD.replace("    token: risk-office-token\n", "")
    assert problems_of(text) == [
        f"{FILE}:9: principal 'risk-office': give exactly one of 'certificate', 'token', 'local: true'"
    ]


def test_local_false_is_no_credential() -> None:
    text = GOOD.replace("    local: true\n", "    local: false\n")
    assert problems_of(text) == [
        f"{FILE}:12: principal 'ops-console': give exactly one of 'certificate', 'token', 'local: true'"
    ]


def test_a_principal_without_a_name() -> None:
    text = GOOD.replace("  - name: risk-office\n    token:", "  - token:")
    assert problems_of(text) == [f"{FILE}:9: a principal needs a 'name'"]


def test_a_principal_name_with_capitals() -> None:
    text = GOOD.replace("name: risk-office", "name: Risk-Office")
    assert problems_of(text) == [
        f"{FILE}:9: principal 'Risk-Office': names are lower-case letters, digits, '_', '-', '.'"
    ]


def test_an_empty_token_name() -> None:
    text = GOOD.replace("token: risk-office-token", 'token: ""')
    assert problems_of(text) == [
        f"{FILE}:10: principal 'risk-office': 'token' must be a non-empty string, found ''",
        f"{FILE}:9: principal 'risk-office': give exactly one of 'certificate', 'token', 'local: true'",
    ]


def test_duplicate_principal_name() -> None:
    text = GOOD + "  - name: risk-office\n    certificate: office.bank.example\n    roles: [outlet]\n"
    assert problems_of(text) == [f"{FILE}:15: principal 'risk-office' is declared twice (first at line 9)"]


def test_a_token_held_by_two_principals() -> None:
    text = GOOD + "  - name: second-office\n    token: risk-office-token\n    roles: [outlet]\n"
    assert problems_of(text) == [f"{FILE}:15: token 'risk-office-token' is held twice (first at line 9)"]


def test_two_local_principals() -> None:
    text = GOOD + "  - name: second-console\n    local: true\n    roles: [outlet]\n"
    assert problems_of(text) == [f"{FILE}:15: only one principal may be 'local: true' (first at line 12)"]


def test_three_local_principals_all_point_at_the_first() -> None:
    extra = "".join(f"  - name: console-{n}\n    local: true\n    roles: [outlet]\n" for n in (2, 3))
    assert problems_of(GOOD + extra) == [
        f"{FILE}:15: only one principal may be 'local: true' (first at line 12)",
        f"{FILE}:18: only one principal may be 'local: true' (first at line 12)",
    ]


def test_bad_yaml_syntax() -> None:
    text = GOOD.replace("    token: risk-office-token\n", "   token: risk-office-token\n")
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{FILE}:10: YAML syntax error: ")


def test_bad_yaml_syntax_gives_an_empty_policy() -> None:
    policy, problems = parse_policy("roles: [\n", FILE)
    assert len(problems) == 1
    assert policy.principals == ()
    assert dict(policy.roles) == {}


def test_a_duplicate_key_is_reported() -> None:
    text = GOOD.replace("    roles: [outlet]\n", "    roles: [outlet]\n    roles: [back_office]\n", 1)
    assert problems_of(text) == [f"{FILE}:9: duplicate key 'roles' (first at line 8)"]


@pytest.mark.parametrize("word", ["yes", "on", "y", "Yes", "1"])
def test_yaml_1_1_booleans_are_not_local_true(word: str) -> None:
    text = GOOD.replace("    local: true\n", f"    local: {word}\n")
    policy, problems = parse_policy(text, FILE)
    assert [str(p) for p in problems] == [
        f"{FILE}:13: principal 'ops-console': 'local' must be true or false",
        f"{FILE}:12: principal 'ops-console': give exactly one of 'certificate', 'token', 'local: true'",
    ]
    console = next(p for p in policy.principals if p.name == "ops-console")
    assert not console.local
    assert policy.local() is None


@pytest.mark.parametrize("text", ["- roles\n- principals\n", "just words\n", ""])
def test_a_policy_that_is_not_a_mapping(text: str) -> None:
    assert problems_of(text) == [f"{FILE}:1: the policy must be a mapping with 'roles' and 'principals'"]


def test_a_principal_that_is_not_a_mapping() -> None:
    text = "roles:\n  outlet: [screen]\nprincipals:\n  - risk-office\n"
    assert problems_of(text) == [f"{FILE}:4: a principal must be a mapping, found 'risk-office'"]


def test_principals_that_are_not_a_list() -> None:
    text = "roles:\n  outlet: [screen]\nprincipals:\n  risk-office: {token: t}\n"
    assert problems_of(text) == [f"{FILE}:4: 'principals' must be a list"]


def test_missing_principals_points_at_the_top() -> None:
    assert problems_of("roles:\n  outlet: [screen]\n") == [f"{FILE}:1: 'principals' must be a list"]


def test_roles_that_are_not_a_mapping() -> None:
    text = "roles: [screen]\nprincipals: []\n"
    assert problems_of(text) == [f"{FILE}:1: 'roles' must map role names to permission lists"]


def test_a_role_that_is_not_a_list() -> None:
    text = "roles:\n  outlet: screen\nprincipals: []\n"
    assert problems_of(text) == [f"{FILE}:2: role 'outlet' must be a list of names"]


def test_every_mistake_is_reported_at_once() -> None:
    text = (
        "roles:\n"  # 1
        "  outlet: [screen, screening]\n"  # 2
        "principals:\n"  # 3
        "  - name: a\n"  # 4
        "    token: t\n"  # 5
        "    roles: [outlet, auditor]\n"  # 6
        "  - name: a\n"  # 7
        "    token: t\n"  # 8
        "    roles: [outlet]\n"  # 9
    )
    lines = [p.line for p in parse_policy(text, FILE)[1]]
    assert lines == [2, 6, 7, 7]


# --- certificate patterns ----------------------------------------------------


def spec(pattern: str) -> PrincipalSpec:
    return PrincipalSpec("p", pattern, None, False, (), frozenset(), 1)


def test_a_certificate_pattern_matches_case_insensitively() -> None:
    principal = spec("*.Counter.Bank.Example")
    assert principal.matches_certificate(["TILL-1.COUNTER.BANK.EXAMPLE"]) == "TILL-1.COUNTER.BANK.EXAMPLE"
    assert principal.matches_certificate(["till-1.counter.bank.example"]) == "till-1.counter.bank.example"


def test_the_first_matching_identity_is_returned_as_given() -> None:
    principal = spec("*.counter.bank.example")
    identities = ["Branch Counters CN", "a.other.example", "Till-7.Counter.Bank.Example", "b.counter.bank.example"]
    assert principal.matches_certificate(identities) == "Till-7.Counter.Bank.Example"


def test_a_subject_cn_matches_an_exact_pattern() -> None:
    principal = spec("risk-office.bank.example")
    assert principal.matches_certificate(["Risk-Office.Bank.Example"]) == "Risk-Office.Bank.Example"
    assert principal.matches_certificate(["risk-office.bank.example.evil.com"]) is None


@pytest.mark.parametrize(
    "identity",
    [
        "counter.bank.example.evil.com",
        "till-1.counter.bank.example.evil.com",
        "evil.com",
        "counter.bank.example",  # the wildcard needs a label before the domain
        "till-1.counterxbank.example",
        "till-1-counter.bank.example",
        "a.b.counter.bank.example",  # one label only, as in a TLS certificate
        ".counter.bank.example",
        "evil.com/x.counter.bank.example",
        "",
    ],
)
def test_a_wildcard_pattern_does_not_match_look_alikes(identity: str) -> None:
    assert spec("*.counter.bank.example").matches_certificate([identity]) is None


def test_a_principal_without_a_certificate_matches_nothing() -> None:
    principal = PrincipalSpec("p", None, "t", False, (), frozenset(), 1)
    assert principal.matches_certificate(["till-1.counter.bank.example"]) is None


def test_no_identities_match_nothing() -> None:
    assert spec("*").matches_certificate([]) is None


# --- every RPC has a permission ----------------------------------------------


def declared_methods() -> list[str]:
    methods = []
    for module in (screening_pb2, admin_pb2, dispositions_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods += [f"/{service.full_name}/{method.name}" for method in service.methods]
    return methods


def test_the_protos_declare_the_services_we_expect() -> None:
    services = {method.split("/")[1] for method in declared_methods()}
    assert {"riskgate.v1.Screening", "riskgate.v1.Watchlists", "riskgate.v1.Rules"} <= services


@pytest.mark.parametrize("method", declared_methods())
def test_every_declared_rpc_needs_a_known_permission(method: str) -> None:
    assert method.startswith("/riskgate.v1.")
    assert method in METHOD_PERMISSIONS, f"{method} has no permission: it would be refused to everyone"
    assert METHOD_PERMISSIONS[method] in PERMISSIONS


def test_the_permission_table_names_only_declared_rpcs() -> None:
    assert set(METHOD_PERMISSIONS) == set(declared_methods())


def test_open_and_authenticated_methods_are_not_riskgate_rpcs() -> None:
    assert not (OPEN_METHODS | AUTHENTICATED_METHODS) & set(METHOD_PERMISSIONS)
    assert all(m.startswith("/grpc.") for m in OPEN_METHODS | AUTHENTICATED_METHODS)
