import ast
import subprocess
import sys
from pathlib import Path

FSD = Path(__file__).resolve().parents[1] / "fsd"


def test_core_imports_neither_ray_nor_mlflow():
    code = ("import pkgutil, importlib, sys, fsd\n"
            "for m in pkgutil.walk_packages(fsd.__path__, 'fsd.'):\n"
            "    if not m.name.startswith('fsd.tuning'): importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of `root`'s package it imports anywhere in its text (top level, in functions,
    under TYPE_CHECKING): `from a.b import c` is an edge to `a.b.c` when that is a module, else to `a.b`."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                          for a in node.names}
        graph[name] = {e for e in edges if e in names and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    import pkg.c\n")
    (pkg / "c.py").write_text("from pkg import a\n")
    (pkg / "d.py").write_text("from pkg.a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_cycle_among_the_modules_of_fsd():
    graph = import_graph(FSD)
    assert {"fsd.train", "fsd.loop", "fsd.config", "fsd.tuning.search.runner"} <= set(graph)
    assert cycles(graph) == []


# The search layer's rooms (fsd/tuning/<room>/) by floor: a room imports only rooms on lower floors, and its own.
FLOORS = {"plan": 1, "tracking": 2, "cost": 2, "search": 3, "results": 4, "command": 5}


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs of fsd.tuning modules where a room imports a room on its own floor or above."""
    def room(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 3 and parts[:2] == ["fsd", "tuning"] else None

    bad = []
    for source, targets in graph.items():
        for target in targets:
            a, b = room(source), room(target)
            if a and b and a != b and FLOORS[b] >= FLOORS[a]:
                bad.append((source, target))
    return sorted(bad)


def test_the_search_layer_is_in_rooms_that_import_one_way():
    graph = import_graph(FSD)
    rooms = {p.name for p in (FSD / "tuning").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert rooms == set(FLOORS)
    loose = [p.name for p in (FSD / "tuning").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside a room: {loose}"
    assert upward_imports(graph) == []
    sizes = {p.relative_to(FSD).as_posix(): len(p.read_text().splitlines()) for p in (FSD / "tuning").rglob("*.py")}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_an_import_up_a_floor_is_found():
    graph = {"fsd.tuning.plan.stages": {"fsd.tuning.search.runner"},
             "fsd.tuning.search.runner": {"fsd.tuning.plan.stages"},
             "fsd.tuning.results.compare": {"fsd.tuning.command.checks"}}
    assert upward_imports(graph) == [("fsd.tuning.plan.stages", "fsd.tuning.search.runner"),
                                     ("fsd.tuning.results.compare", "fsd.tuning.command.checks")]


def room_publics(tuning: Path) -> dict[str, set[str]]:
    """Room -> the modules its `__init__.py` names in `__all__` (what another room may import)."""
    out = {}
    for init in sorted(tuning.glob("*/__init__.py")):
        names = [node.value for node in ast.parse(init.read_text()).body if isinstance(node, ast.Assign)
                 and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]]
        assert names, f"{init} has no __all__"
        out[init.parent.name] = set(ast.literal_eval(names[0]))
    return out


def private_imports(sources: dict[str, str], publics: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a module of `sources` (module name -> its text) imports a module of an
    `fsd.tuning` room it is not in, and that room's `__all__` (`publics`) does not name it: anywhere in its text,
    by `import a.b`, `from a import b` or `from a.b import c`, relative imports resolved."""
    def room_module(name: str) -> tuple[str, str] | None:
        parts = name.split(".")
        return (parts[2], parts[3]) if len(parts) > 3 and parts[:2] == ["fsd", "tuning"] else None

    bad = []
    for importer, text in sources.items():
        package = importer.split(".")[:-1]
        targets = []
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*package[:len(package) - node.level + 1], node.module or ""] if node.level
                                else [node.module]).strip(".")
                targets += [f"{base}.{a.name}" for a in node.names]
        mine = room_module(importer)
        for target in targets:
            found = room_module(target)
            if found and (not mine or mine[0] != found[0]) and found[1] not in publics.get(found[0], set()):
                bad.append((importer, ".".join(target.split(".")[:4])))
    return sorted(set(bad))


def test_no_module_imports_another_rooms_private_module():
    publics = room_publics(FSD / "tuning")
    assert set(publics) == set(FLOORS)
    for room, names in publics.items():
        missing = [n for n in names if not (FSD / "tuning" / room / f"{n}.py").is_file()]
        assert not missing, (room, missing)
    root = FSD.parent
    sources = {".".join(p.relative_to(root).with_suffix("").parts): p.read_text()
               for p in [*FSD.rglob("*.py"), root / "tune_main.py"]}
    assert private_imports(sources, publics) == []


def test_an_import_of_another_rooms_private_module_is_found():
    publics = {"plan": {"spec"}, "search": {"runner"}}
    sources = {"fsd.tuning.search.runner": "from fsd.tuning.plan.spec import SearchSpec\n"
                                           "from fsd.tuning.search import stage\n",  # its own room's: allowed
               "fsd.tuning.results.compare": "def f():\n    from fsd.tuning.search.stage import run_stage\n",
               "fsd.tuning.results.report": "import fsd.tuning.plan.folding\nfrom fsd.tuning.search import runner\n",
               "fsd.tuning.command.checks": "from ..plan import ledger\nfrom ..search import runner\n",
               "tune_main": "from fsd.tuning.search import halving, runner\n"}
    assert private_imports(sources, publics) == [
        ("fsd.tuning.command.checks", "fsd.tuning.plan.ledger"),
        ("fsd.tuning.results.compare", "fsd.tuning.search.stage"),
        ("fsd.tuning.results.report", "fsd.tuning.plan.folding"),
        ("tune_main", "fsd.tuning.search.halving")]
