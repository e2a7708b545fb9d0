"""Imports point one way: no module of carrot_hub, training or model_card imports one that imports it
back, directly or through others (function-level imports count: they only hide a cycle)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("carrot_hub", "training", "model_card")
# Cycles inside carrot collect's scorers, left to that subpackage's owners (issue 24 item 4 names the others).
KNOWN = {"carrot_hub.collect"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_statements(name: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in one file, function-level ones included; relative ones resolved.
    A plain `import a.b` gives module "" and names ["a.b"]."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            found.append((node.lineno, module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.append((node.lineno, "", [alias.name for alias in node.names]))
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    found = set()
    for _, module, names in _import_statements(name, path):
        found.update([module, *(f"{module}.{n}" for n in names)] if module else names)
    return {module for module in found if module in modules and module != name}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycles():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = [c for c in _cycles(edges) if not all(any(m == k or m.startswith(k + ".") for k in KNOWN) for m in c)]
    assert cycles == [], f"import cycles: {cycles}; move what both sides need into a leaf module"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _project_imports(path: Path, name: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of a project package in one file (`import a.b`: names [])."""
    found = []
    for line, module, names in _import_statements(name, path):
        for target in ([module] if module else names):
            if target.split(".")[0] in PACKAGES:
                found.append((line, target, names if module else []))
    return found


def test_every_project_import_names_a_module_that_exists():
    # Function-level imports only fail when the function runs: a module moved by a refactor would
    # otherwise break a rarely run command (as `training.ablation` was, importing `training.resplit`).
    modules = _modules()
    missing = []
    for name, path in modules.items():
        for line, module, names in _project_imports(path, name):
            if module not in modules:
                missing.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
                continue
            submodules_or_names = [n for n in names if f"{module}.{n}" not in modules]
            source = modules[module].read_text(encoding="utf-8")
            for imported in submodules_or_names:
                if imported != "*" and imported not in source:
                    missing.append(f"{path.relative_to(ROOT)}:{line} imports {imported} from {module}")
    assert missing == [], "imports of modules or names that do not exist: " + "; ".join(missing)
