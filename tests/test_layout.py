"""The package's layout: no import circle among the modules of `pipelines` (sub-packages included).

Imports are read with `ast`, not run: module-level imports, imports inside functions and imports under
`if TYPE_CHECKING:` all count, so a circle that a lazy import hides today is still found.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` and its sub-packages."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` (at `path`) imports anywhere in its code.

    `from A import b` names the module `A.b` when there is one, else `A` itself (b is a name in it);
    `import A.b.c` names the deepest module of that path. Relative imports are resolved.
    """
    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else known(base))
    return found - {None, name}


def import_circles(package: Path) -> list[list[str]]:
    """Every group of modules that import each other in a circle (strongly connected components of
    more than one module), each sorted; empty when the imports form no circle."""
    modules = module_files(package)
    graph = {name: sorted(imported_modules(name, path, modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(circles)


def test_no_import_circle_among_the_pipelines_modules():
    circles = import_circles(ROOT / "pipelines")
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(group) for group in circles)


def test_a_circle_through_a_sub_package_and_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "masks").mkdir(parents=True)
    (package / "diffusion").mkdir()
    (package / "__init__.py").write_text("")
    (package / "masks" / "__init__.py").write_text("")
    (package / "diffusion" / "__init__.py").write_text("from pkg.diffusion.loop import blend\n")
    (package / "masks" / "sam.py").write_text("from ..diffusion import loop\n")
    (package / "diffusion" / "loop.py").write_text("def blend():\n    from pkg.masks import sam\n")
    (package / "diffusion" / "speed.py").write_text("import pkg.masks.sam\nfrom . import loop\n")
    assert import_circles(package) == [["pkg.diffusion.loop", "pkg.masks.sam"]]

    (package / "diffusion" / "loop.py").write_text("def blend():\n    pass\n")  # the lazy import gone
    assert import_circles(package) == []
