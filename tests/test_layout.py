"""The package layout is the design (docs/architecture.md): the layers below, imports only going
down them, no import cycles, the root of edge/ holding the shared foundation only, no module
reaching into another package's private names, and the gateway never parsing JSON it wrote.

Guards against the layout drifting back into a flat folder whose imports run every way: a
module that imports from a layer above its own, a cycle, or a new module dropped at the root
fails here, naming the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

EDGE = Path(__file__).resolve().parent.parent / "edge"

#: the layers, lowest first; a module may import from its own layer and those below it. A
#: module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # what everything shares: settings (sink URLs are checked with them), metrics, logs,
    # tracing, the nouns, the wire schema, the state the processes share
    (
        "foundation",
        (
            "edge",
            "edge.compat",
            "edge.logs",
            "edge.frames",
            "edge.codec",
            "edge.settings",
            "edge.metrics",
            "edge.tracing",
            "edge.sharedmem",
            "edge.sinks",  # the package itself: sink URLs, parsed with the settings
            "edge.sinks.base",
        ),
    ),
    # running one model version: decode, tasks, sessions, providers, batching
    ("inference", ("edge.inference",)),
    # which version answers a stream: repository, versions, shadow, canary, pulling files
    ("models", ("edge.models",)),
    # who may connect and how much
    ("access", ("edge.access",)),
    # results to brokers
    ("sinks", ("edge.sinks.publisher", "edge.sinks.runner", "edge.sinks.mqtt", "edge.sinks.nats")),
    # the frame path whatever the wire
    ("core", ("edge.core",)),
    # KServe v2's data plane, shared by its REST and gRPC fronts
    ("kserve", ("edge.kserve",)),
    # the wires
    ("transports", ("edge.transports",)),
    # startup and shutdown, serving processes, the supervisor
    ("process", ("edge.process",)),
    # programs that talk to a gateway over the wire
    ("clients", ("edge.client", "edge.bench")),
    ("entry", ("edge.cli", "edge.launch", "edge.__main__")),
]

#: the most modules the root of edge/ may hold (the foundation, the entry points)
MAX_ROOT_MODULES = 12


def _modules() -> dict[str, Path]:
    out = {}
    for path in EDGE.rglob("*.py"):
        rel = path.relative_to(EDGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _generated(name: str) -> bool:
    return ".gen." in name and name.endswith(("_pb2", "_pb2_grpc"))


def layer_of(module: str) -> int:
    best, found = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                if p == "edge" and module != "edge":
                    continue  # "edge" names the package module only
                best, found = len(p), i
    assert found >= 0, f"{module} is in no layer of tests/test_layout.py"
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of edge code, wherever
    it sits in the file (functions, TYPE_CHECKING blocks and all)."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "edge" or a.name.startswith("edge."):
                    found.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not (target == "edge" or target.startswith("edge.")):
                continue
            names = [a.name for a in node.names]
            # `from edge.x import y` where y is a module: the import is of edge.x.y
            subs = [n for n in names if f"{target}.{n}" in MODULES]
            for n in subs:
                found.append((f"{target}.{n}", [], node.lineno))
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        if _generated(m):
            continue
        graph[m] = {t for t, _, _ in imports_of(m) if t in MODULES and t != m}
    return graph


def test_every_module_is_in_a_layer() -> None:
    for m in MODULES:
        layer_of(m)


def test_no_import_runs_up_the_layers() -> None:
    """A module imports only from its own layer and the layers below it."""
    bad = []
    for m in MODULES:
        if _generated(m):
            continue
        mine = layer_of(m)
        for target, _, line in imports_of(m):
            if target in MODULES and layer_of(target) > mine:
                bad.append(
                    f"{m}:{line} ({LAYERS[mine][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            # a package's __init__ importing its own submodules is how packages work
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_from_another_package() -> None:
    """`from edge.a.b import _helper` only within package edge.a."""
    bad = []
    for m in MODULES:
        if _generated(m):
            continue
        mine = m if MODULES[m].name == "__init__.py" else m.rpartition(".")[0]
        for target, names, line in imports_of(m):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            owner = target if MODULES.get(target, Path()).name == "__init__.py" else None
            owner = owner or target.rpartition(".")[0]
            if private and owner != mine:
                bad.append(f"{m}:{line} takes {private} from {target}")
    assert not bad, "\n".join(bad)


def test_the_root_holds_the_foundation_only() -> None:
    root = sorted(p.name for p in EDGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root
    for name in root:
        module = "edge" if name == "__init__.py" else f"edge.{name[:-3]}"
        assert LAYERS[layer_of(module)][0] in ("foundation", "entry"), module


#: where the gateway parses JSON, each one of a client's own messages (server side only: the
#: device client and the bench are clients and read the gateway's replies by design)
CLIENT_JSON = {
    "edge.codec": "parse_control: a client's control message",
    "edge.access.auth": "auth_message_token: a WebSocket client's auth message",
    "edge.kserve.rest": "a KServe REST request body",
    "edge.transports.http": "a /v1 request body (the models API, canary settings)",
}


def test_the_gateway_never_parses_its_own_json() -> None:
    """Results stay typed until their wire: no module of the gateway calls json.loads or
    json.load but those that read what a client sent (CLIENT_JSON, each one checked to still
    need it), so no result is encoded to JSON and parsed back on its way out."""
    found: dict[str, list[int]] = {}
    for m, path in MODULES.items():
        if m.startswith(("edge.client", "edge.bench")) or _generated(m):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("loads", "load")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"
            ):
                found.setdefault(m, []).append(node.lineno)
    unexpected = {m: lines for m, lines in found.items() if m not in CLIENT_JSON}
    assert not unexpected, f"json parsed outside the client-input parsers: {unexpected}"
    stale = sorted(set(CLIENT_JSON) - set(found))
    assert not stale, f"CLIENT_JSON names modules that no longer parse JSON: {stale}"
