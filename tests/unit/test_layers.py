"""The folders of service/ are layers, and imports only run down them (README, Development).

    tools      the riskgate command line
    server     gRPC wiring, admin services, metrics, access control, the web console
    backtest   recorded history replayed through rules directories, offline
    synth      synthetic traffic (the server's warm-up uses it)
    rules      the rule language and the rules directory
    riskdata   risk data kept in Redis, and the counter and list declarations
    redis      Redis plumbing
    pipeline   the request path, pure
    base       domain, errors, clock, logs, settings, suggest, durations, yamlsrc

A module may import its own package and any layer below it, never one above. The rule
language and the request path load no Redis code at all: not directly, and not through a
package's __init__ or a module they import (checked on the whole import closure).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("base", "pipeline", "redis", "riskdata", "rules", "synth", "backtest", "server", "tools")
PACKAGES = frozenset(LAYERS[1:])
SERVICE = REPO / "service"
REDIS_FREE = ("pipeline", "rules")  # layers whose import closure holds no module importing redis-py


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(SERVICE.rglob("*.py")):
        if "_gen" in path.parts:
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "base"


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line): modules, and `from package import module` names that are modules."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    yield f"{node.module}.{alias.name}", node.lineno


def _service_imports(module: str) -> set[str]:
    """The service modules `module` loads when imported: what it names, and their packages' __init__."""
    out: set[str] = set()
    for name, _ in _imports(MODULES[module]):
        if name.startswith("service.") and not name.startswith("service._gen") and name in MODULES:
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
    return out


def test_imports_only_run_down_the_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        own = LAYERS.index(layer_of(module))
        for name, line in _imports(path):
            if not name.startswith("service.") or name.startswith("service._gen") or name not in MODULES:
                continue
            if LAYERS.index(layer_of(name)) > own:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {layer_of(module)} imports {name} ({layer_of(name)})")
    assert not wrong, "\n".join(wrong)


def test_the_request_path_and_the_rule_language_load_no_redis_code() -> None:
    for layer in REDIS_FREE:
        roots = [m for m in MODULES if layer_of(m) == layer]
        seen: dict[str, str] = {}  # module -> the module that imported it
        todo = list(roots)
        for root in roots:
            seen[root] = root
        while todo:
            module = todo.pop()
            for name in _service_imports(module):
                if name not in seen:
                    seen[name] = module
                    todo.append(name)
        offenders = []
        for module in seen:
            for name, line in _imports(MODULES[module]):
                if name == "redis" or name.startswith("redis."):
                    chain = [module]
                    while seen[chain[-1]] != chain[-1]:
                        chain.append(seen[chain[-1]])
                    offenders.append(f"{' <- '.join(chain)} (line {line}: import {name})")
        assert not offenders, f"{layer} loads Redis code:\n" + "\n".join(offenders)


def test_every_module_is_in_a_layer() -> None:
    top_level = {p.name for p in SERVICE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top_level - {"_gen"} == set(PACKAGES), "a new package under service/ needs a place in LAYERS"
