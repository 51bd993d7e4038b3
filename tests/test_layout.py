"""Package structure: no import cycles (lazy, function-level imports included), nothing imports the entry
point, the backend is reached only through dynarch/runtime/, and the public API is declared."""

import ast
from pathlib import Path

import dynarch

PKG = Path(dynarch.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree):
    """ast.walk without `if TYPE_CHECKING:` bodies: imports for type hints only are not run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(path: Path) -> set[str]:
    """Every dynarch module `path` imports, at module level or inside functions."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dynarch")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("dynarch"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "active"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "active":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    assert not find_cycles(graph()), find_cycles(graph())


def test_the_cycle_finder_finds_cycles_and_sees_lazy_imports():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert not find_cycles({"a": {"b"}, "b": {"c"}, "c": set()})
    edges = graph()
    assert "dynarch.build" in edges["dynarch.phases"]  # imported inside a function only


def test_nothing_imports_the_entry_point():
    assert not [m for m, deps in graph().items() if "dynarch.__main__" in deps]


def test_the_backend_is_reached_only_through_the_runtime():
    offenders = []
    for path in PKG.rglob("*.py"):
        if "runtime" in path.parts or path.parent.name == "data":
            continue  # the seam itself; the tf.data input pipeline is the data package's own
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("tensorflow", "jax", "torch")]
    assert not offenders, offenders


def test_public_api_is_declared():
    assert set(dynarch.__all__) >= {"compose_run", "train", "migrate_model", "render", "load_checkpoint"}
    for name in dynarch.__all__:
        assert getattr(dynarch, name) is not None
