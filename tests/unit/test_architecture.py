"""The layout docs/architecture.md describes, kept by test: layers that import only downwards,
no process-wide mutable state outside the runtime, no `global`, no function over 50 lines."""

import ast
import pathlib

import pytest

CHAT = pathlib.Path(__file__).resolve().parents[2] / "chat"

# Lowest first. A module imports only modules of a lower layer, or of its own package.
LAYERS = [
    {
        "protocol",
        "content",
        "authority",
        "origin",
        "security",
        "login_throttle",
        "storage",
        "upstream",
        "localmodel",
        "answering",  # the package's docstring; its modules have layers of their own
        "answering.buffer",
        "answering.database",
        "answering.context",
        "socket_writes",
    },
    {"providers"},
    {"models"},
    {
        "errors",
        "limits",
        "attachments",
        "upload_sweep",
        "transcripts",
        "admin_guards",
        "context_processors",
        "relay",
        "answering.reading",
        "answering.checkpoints",
        "answering.maintenance",
        "answering.titles",
    },
    {"frames", "follower", "session_socket", "answering.job", "importers"},
    {"answering.worker"},
    {"runtime"},
    # The account events: views tell the owner's other tabs of a rename through them.
    {"signals"},
    {"consumers", "views", "uploads", "accounts", "health", "admin"},
    {"routing", "urls", "apps", "admin_site", "management"},
]
MAX_FUNCTION_LINES = 50
# Lists Django and Channels read by name; built once, never changed.
ROUTE_LISTS = {"__all__", "urlpatterns", "websocket_urlpatterns"}
MUTABLE_CALLS = {"dict", "list", "set", "Counter", "defaultdict", "deque", "OrderedDict", "WeakKeyDictionary"}


def modules():
    for path in sorted(CHAT.rglob("*.py")):
        relative = path.relative_to(CHAT)
        if relative.parts[0] == "migrations":
            continue
        parts = relative.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # chat/__init__.py is empty
            yield ".".join(parts), ast.parse(path.read_text(), filename=str(path))


def layer_of(name):
    """The layer of `name` (a module or package under chat), by its longest listed prefix."""
    parts = name.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        for index, layer in enumerate(LAYERS):
            if prefix in layer:
                return index, prefix
    raise AssertionError(f"chat.{name} is in no layer of tests/unit/test_architecture.py: add it")


def imported(tree):
    """The chat modules a module imports, without the `chat.` prefix."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "chat":
                yield from (alias.name for alias in node.names)
            elif node.module.startswith("chat."):
                yield node.module.removeprefix("chat.")
        elif isinstance(node, ast.Import):
            yield from (alias.name.removeprefix("chat.") for alias in node.names if alias.name.startswith("chat."))


def test_every_module_imports_only_downwards():
    wrong = []
    for name, tree in modules():
        layer, home = layer_of(name)
        for target in imported(tree):
            target_layer, target_home = layer_of(target)
            if target_layer < layer or target_home == home:
                continue
            wrong.append(f"chat.{name} imports chat.{target}")
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_function_is_over_fifty_lines():
    long = [
        f"chat.{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)


def test_no_global_statements():
    found = [
        f"chat.{name}:{node.lineno}"
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    assert not found


def is_mutable(value):
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        function = value.func
        called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        return called in MUTABLE_CALLS
    return False


@pytest.mark.parametrize(
    "name,tree", [pair for pair in modules() if pair[0] != "runtime"], ids=lambda v: v if isinstance(v, str) else ""
)
def test_no_module_keeps_mutable_state_outside_the_runtime(name, tree):
    """Constants are named in capitals and never changed; anything else a module binds at its top
    level to a container would be state shared by the whole process, which belongs to the runtime."""
    state = [
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None and is_mutable(node.value)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and not target.id.isupper() and target.id not in ROUTE_LISTS
    ]
    assert not state, f"chat.{name} keeps process-wide state: {state}"
