"""The layering of docs/internals.md ("Layers"), kept: every labpipe module imports only
what its layer may. The doc's table is the rule; this test reads it from there.

An import is any ``import`` or ``from ... import`` in a module: at the top, inside a
function (lazy) or under ``if TYPE_CHECKING:`` (a type-only import still couples the
two modules), and any string that is the whole name of a labpipe module, optionally
with ``:function`` (the launcher's preload list, ``start_process`` targets).
"""

import ast
import itertools
import re
from pathlib import Path

import labpipe
from labpipe.worker import launcher

PACKAGE = Path(labpipe.__file__).parent
DOC = Path(__file__).resolve().parent.parent / "docs" / "internals.md"
HEADER = "| layer | modules | may import |"
NAMED = re.compile(r"labpipe(\.\w+)*(:\w+)?")


def read_layers():
    """{layer: (its modules, the layers it may import, single modules it may import)}
    from the doc's table."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    assert HEADER in lines, f"{DOC} has no layer table ({HEADER})"
    rows = itertools.takewhile(lambda line: line.startswith("|"),
                               lines[lines.index(HEADER) + 2:])
    layers = {}
    for row in rows:
        name, modules, allowed = (cell.strip() for cell in row.strip(" |").split("|"))
        items = [item.strip() for item in allowed.split(",")]
        items = [item for item in items if item not in ("", "nothing")]
        layers[name] = (tuple(module.strip(" `") for module in modules.split(",")),
                        [item for item in items if not item.startswith("`")],
                        [item.strip("`") for item in items if item.startswith("`")])
    return layers


def all_modules():
    """{module name: its file} of every module of labpipe."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(module, path, known):
    """(line, the import as written, the labpipe module it names) of every import of
    the module's code, including strings naming a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, f"import {alias.name}", alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                written = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                submodule = f"{base}.{alias.name}"
                yield node.lineno, written, submodule if submodule in known else base
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and NAMED.fullmatch(node.value) and node.value.partition(":")[0] in known):
            yield node.lineno, f"the string {node.value!r}", node.value.partition(":")[0]


def layer_of(module, layers):
    """The layer whose longest module name is the module or a package above it."""
    owners = [(len(prefix), name) for name, (prefixes, _, _) in layers.items()
              for prefix in prefixes if module == prefix or module.startswith(prefix + ".")]
    return max(owners)[1] if owners else None


def test_every_module_imports_only_what_its_layer_may():
    layers, known = read_layers(), all_modules()
    broken = []
    for module, path in known.items():
        if module == "labpipe":
            continue
        layer = layer_of(module, layers)
        if layer is None:
            broken.append(f"{module} is in no layer: add it to the table")
            continue
        _, may, singles = layers[layer]
        for line, written, target in imports(module, path, known):
            if not target.startswith("labpipe."):  # other packages, or labpipe itself
                continue
            other = layer_of(target, layers)
            if other != layer and other not in may and target not in singles:
                allowed = ", ".join(may + singles) or "nothing"
                broken.append(f"{module} line {line}: {written}: layer {layer} may import "
                              f"{allowed}, not {other} ({target})")
    assert not broken, ("imports across a layer boundary (docs/internals.md, "
                        "\"Layers\"):\n" + "\n".join(broken))


def test_the_table_is_layered():
    """Every layer it names exists, every single module exists, and no layers import
    each other in a cycle."""
    layers, known = read_layers(), all_modules()
    for name, (prefixes, may, singles) in layers.items():
        assert set(may) <= set(layers), (name, set(may) - set(layers))
        assert set(prefixes + tuple(singles)) <= set(known), name
    done: list[str] = []
    while len(done) < len(layers):
        ready = [name for name, (_, may, _) in layers.items()
                 if name not in done and set(may) <= set(done)]
        assert ready, f"layers importing each other: {sorted(set(layers) - set(done))}"
        done += ready


def test_the_launchers_preload_names_are_seen_as_imports():
    """The check sees the modules the worker's template imports by name."""
    known = all_modules()
    path = known["labpipe.worker.launcher"]
    seen = {target for _, _, target in imports("labpipe.worker.launcher", path, known)}
    named = (launcher.PRELOAD + launcher.BLUESKY_PRELOAD
             + [launcher.TEMPLATE_MODULE, launcher.WORKER_TARGET])
    assert {name.partition(":")[0] for name in named if name.startswith("labpipe.")} <= seen
