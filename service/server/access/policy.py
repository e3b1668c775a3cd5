"""The access policy: which principal holds which roles, and which permission each RPC needs.

A policy file (`RISKGATE_POLICY_FILE`, YAML, read by the strict reader the
rule files use) names roles as sets of permissions and principals as
credentials with roles:

    roles:
      outlet: [screen]
      back_office: [screen, lists.read, lists.write, decisions.read]
    principals:
      - name: branch-counters            # recorded in the audit trail and metrics
        certificate: "*.counter.bank.example"   # a client certificate's SAN or subject CN ("*": one label)
        roles: [outlet]
      - name: risk-office
        token: risk-office               # a bearer token's name in RISKGATE_TOKENS_FILE
        roles: [back_office]
      - name: ops-console
        local: true                      # loopback and Unix-socket callers without credentials
        roles: [back_office]

Every problem is reported as `file:line: problem`; a broken file never
replaces the policy in force (`riskgate policy check FILE` checks one).
Without a policy file the service serves loopback and Unix-socket callers
only, with every permission: a developer default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.errors import SourceError, SourceProblem
from service.yamlsrc import YMap, YNode, YScalar, YSeq, describe, parse_yaml

# What each permission allows.
PERMISSIONS: Mapping[str, str] = {
    "screen": "Screening/Screen and ScreenStream",
    "lists.read": "Watchlists/CheckEntry and DescribeLists",
    "lists.write": "Watchlists/AddEntry and RemoveEntry (and bulk imports through the API)",
    "rules.admin": "Rules/ReloadRules",
    "decisions.read": "reading the decision log and the audit trail through the API (Dispositions/Get)",
    "dispositions.write": "Dispositions/Report: what happened after a decision",
    "console": "the monitoring console's views (service.server.console; decisions.read opens them too)",
}

# The permission every RPC needs. An RPC missing here is refused to everyone (fail closed).
METHOD_PERMISSIONS: Mapping[str, str] = {
    "/riskgate.v1.Screening/Screen": "screen",
    "/riskgate.v1.Screening/ScreenStream": "screen",
    "/riskgate.v1.Watchlists/CheckEntry": "lists.read",
    "/riskgate.v1.Watchlists/DescribeLists": "lists.read",
    "/riskgate.v1.Watchlists/AddEntry": "lists.write",
    "/riskgate.v1.Watchlists/RemoveEntry": "lists.write",
    "/riskgate.v1.Rules/ReloadRules": "rules.admin",
    "/riskgate.v1.Rules/ListBreakers": "rules.admin",
    "/riskgate.v1.Rules/RearmBreaker": "rules.admin",
    "/riskgate.v1.Dispositions/Report": "dispositions.write",
    "/riskgate.v1.Dispositions/Get": "decisions.read",
}
# Open to every caller: load balancers and orchestrators probe health without credentials.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Open to every authenticated principal, whatever its roles: the API's description (the .proto
# files are public anyway), for grpcurl and other tools.
AUTHENTICATED_METHODS = frozenset(
    {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class PrincipalSpec:
    """One principal of the policy: how it is recognised, and its roles' permissions."""

    name: str
    certificate: str | None  # a name or `*.domain` pattern for a SAN or the subject CN
    token: str | None  # a token name in the tokens file
    local: bool  # loopback and Unix-socket callers without credentials
    roles: tuple[str, ...]
    permissions: frozenset[str]
    line: int

    def matches_certificate(self, identities: Sequence[str]) -> str | None:
        """The first identity (SAN or CN) the certificate pattern matches, or None. A pattern is
        an exact name (case-insensitive), or `*.` and a domain, where `*` stands for exactly one
        non-empty label (as in a TLS certificate): `*.counter.bank.example` matches
        `c17.counter.bank.example`, not `a.b.counter.bank.example` nor `counter.bank.example`."""
        if self.certificate is None:
            return None
        pattern = self.certificate.lower()
        for identity in identities:
            if certificate_name_matches(pattern, identity.lower()):
                return identity
        return None


def certificate_name_matches(pattern: str, name: str) -> bool:
    if not pattern.startswith("*."):
        return name == pattern
    suffix = pattern[1:]
    label = name[: -len(suffix)] if name.endswith(suffix) else ""
    return bool(label) and not any(c in label for c in "./:*")


@dataclass(frozen=True, slots=True)
class Policy:
    roles: Mapping[str, frozenset[str]]
    principals: tuple[PrincipalSpec, ...]
    source: str  # the file, or "" for the developer default

    def by_token(self, token_name: str) -> PrincipalSpec | None:
        for principal in self.principals:
            if principal.token == token_name:
                return principal
        return None

    def by_certificate(self, identities: Sequence[str]) -> tuple[PrincipalSpec, str] | None:
        for principal in self.principals:
            identity = principal.matches_certificate(identities)
            if identity is not None:
                return principal, identity
        return None

    def local(self) -> PrincipalSpec | None:
        for principal in self.principals:
            if principal.local:
                return principal
        return None

    def token_names(self) -> set[str]:
        return {p.token for p in self.principals if p.token is not None}


# The developer default, without a policy file: local callers may do everything.
LOCAL_DEFAULT = Policy(
    roles={"developer": frozenset(PERMISSIONS)},
    principals=(
        PrincipalSpec(
            name="local",
            certificate=None,
            token=None,
            local=True,
            roles=("developer",),
            permissions=frozenset(PERMISSIONS),
            line=0,
        ),
    ),
    source="",
)


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[SourceProblem] = []

    def problem(self, line: int, text: str) -> None:
        self.problems.append(SourceProblem(self.file, line, text))

    def names(self, node: YNode | None, line: int, what: str) -> list[tuple[str, int]]:
        """A list of names (`[a, b]`)."""
        if not isinstance(node, YSeq):
            self.problem(node.line if node is not None else line, f"{what} must be a list of names")
            return []
        found: list[tuple[str, int]] = []
        for item in node.items:
            if not isinstance(item, YScalar) or not isinstance(item.value, str):
                self.problem(item.line, f"{what}: expected a name, found {describe(item)}")
                continue
            found.append((item.value, item.line))
        return found

    def text(self, node: YNode | None, what: str) -> str | None:
        if node is None:
            return None
        if not isinstance(node, YScalar) or not isinstance(node.value, str) or not node.value.strip():
            self.problem(node.line, f"{what} must be a non-empty string, found {describe(node)}")
            return None
        return node.value.strip()

    def roles(self, node: YNode | None, line: int) -> dict[str, frozenset[str]]:
        if not isinstance(node, YMap):
            self.problem(node.line if node is not None else line, "'roles' must map role names to permission lists")
            return {}
        roles: dict[str, frozenset[str]] = {}
        for key, value in node.items:
            name = str(key.value)
            if not _NAME.match(name):
                self.problem(key.line, f"role '{name}': names are lower-case letters, digits, '_', '-', '.'")
            permissions: set[str] = set()
            for permission, at in self.names(value, key.line, f"role '{name}'"):
                if permission not in PERMISSIONS:
                    self.problem(
                        at, f"role '{name}': unknown permission '{permission}' (known: {', '.join(PERMISSIONS)})"
                    )
                permissions.add(permission)
            roles[name] = frozenset(permissions & set(PERMISSIONS))
        return roles

    def principal(self, node: YNode, roles: Mapping[str, frozenset[str]]) -> PrincipalSpec | None:
        if not isinstance(node, YMap):
            self.problem(node.line, f"a principal must be a mapping, found {describe(node)}")
            return None
        for key, _ in node.items:
            if key.value not in ("name", "certificate", "token", "local", "roles"):
                self.problem(key.line, f"unknown key '{key.value}' (expected name, certificate, token, local, roles)")
        name = self.text(node.get("name"), "'name'")
        if name is None:
            if node.get("name") is None:
                self.problem(node.line, "a principal needs a 'name'")
            return None
        if not _NAME.match(name):
            self.problem(node.line, f"principal '{name}': names are lower-case letters, digits, '_', '-', '.'")
        certificate = self.text(node.get("certificate"), f"principal '{name}': 'certificate'")
        token = self.text(node.get("token"), f"principal '{name}': 'token'")
        local_node = node.get("local")
        local = False
        if local_node is not None:
            if not isinstance(local_node, YScalar) or not isinstance(local_node.value, bool):
                self.problem(local_node.line, f"principal '{name}': 'local' must be true or false")
            else:
                local = local_node.value
        if sum((certificate is not None, token is not None, local)) != 1:
            self.problem(node.line, f"principal '{name}': give exactly one of 'certificate', 'token', 'local: true'")
        granted: list[str] = []
        permissions: set[str] = set()
        for role, at in self.names(node.get("roles"), node.line, f"principal '{name}': 'roles'"):
            if role not in roles:
                self.problem(at, f"principal '{name}': unknown role '{role}' (declared: {', '.join(roles) or 'none'})")
                continue
            granted.append(role)
            permissions |= roles[role]
        return PrincipalSpec(name, certificate, token, local, tuple(granted), frozenset(permissions), node.line)

    def policy(self, tree: YNode | None) -> Policy:
        if not isinstance(tree, YMap):
            self.problem(
                tree.line if tree is not None else 1, "the policy must be a mapping with 'roles' and 'principals'"
            )
            return Policy({}, (), self.file)
        for key, _ in tree.items:
            if key.value not in ("roles", "principals"):
                self.problem(key.line, f"unknown key '{key.value}' (expected roles, principals)")
        roles = self.roles(tree.get("roles"), tree.line)
        principals_node = tree.get("principals")
        principals: list[PrincipalSpec] = []
        if not isinstance(principals_node, YSeq):
            line = principals_node.line if principals_node is not None else tree.line
            self.problem(line, "'principals' must be a list")
        else:
            for item in principals_node.items:
                principal = self.principal(item, roles)
                if principal is not None:
                    principals.append(principal)
        self._unique(principals)
        return Policy(roles, tuple(principals), self.file)

    def _unique(self, principals: Sequence[PrincipalSpec]) -> None:
        names: dict[str, int] = {}
        tokens: dict[str, int] = {}
        local: int | None = None
        for principal in principals:
            if principal.name in names:
                self.problem(
                    principal.line,
                    f"principal '{principal.name}' is declared twice (first at line {names[principal.name]})",
                )
            names.setdefault(principal.name, principal.line)
            if principal.token is not None:
                if principal.token in tokens:
                    self.problem(
                        principal.line,
                        f"token '{principal.token}' is held twice (first at line {tokens[principal.token]})",
                    )
                tokens.setdefault(principal.token, principal.line)
            if principal.local:
                if local is not None:
                    self.problem(principal.line, f"only one principal may be 'local: true' (first at line {local})")
                local = local or principal.line


def parse_policy(text: str, file: str) -> tuple[Policy, list[SourceProblem]]:
    """The policy a file's text declares, and its problems (the policy is usable only without)."""
    tree, problems = parse_yaml(text, file)
    reader = _Reader(file)
    policy = reader.policy(tree) if not problems else Policy({}, (), file)
    return policy, [*problems, *reader.problems]


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; SourceError lists every problem as `file:line: problem`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError([SourceProblem(str(path), 1, f"cannot read the policy file: {error}")]) from None
    policy, problems = parse_policy(text, str(path))
    if problems:
        raise SourceError(problems)
    return policy
