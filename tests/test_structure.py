"""The package's shape, measured from its source: small modules and functions, no import circle, and
imports pointing from upper layers to lower ones only (DESIGN.md's layers). Every import counts,
those inside functions too (they are deferred for start-up time, not to hide a circle)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"ppl_vae": ROOT / "ppl_vae", "ppl_vae.models": ROOT / "models", "ppl_vae.guides": ROOT / "guides"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60

# lower layers first; an import may point to its own layer or a lower one, never up
LAYERS = [
    # foundations: names, configuration, data, devices, files, traces, graphs
    {"registry", "config", "device", "pixels", "param_store", "budget", "user_data", "data", "distributed", "checkpoint", "hooks", "progress",
     "run_folder", "user_code", "enumerated", "particles", "sites", "capture", "checks", "nn", "pixelcnn", "__init__"},
    {"models", "guides"},  # generative models and guides
    {"objectives", "global_latents", "labels"},  # training objectives
    {"evaluate", "importance_sampling", "aggregate", "codes", "posterior", "refine", "plots", "scoring", "report_text", "html_report"},
    {"step", "faults", "epoch_log", "pair", "train_state", "train_setup", "train"},  # the training step and loop
    {"experiment", "labelled_runs", "compare", "collapse", "compare_table", "compare_stats", "compare_workers", "run_spec", "cli_options", "cli_data_options", "cli", "__main__"},
]  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__") if parts[-1] == "__init__" else name] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The package's own modules that ``name`` imports, anywhere in its source."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            start = base
            for _ in range(node.level - 1):
                start = start.rpartition(".")[0]
            module = ((start + "." + node.module) if node.module else start) if node.level else node.module
            # `from package import submodule` imports the submodule; anything else, the module itself
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


def _layer(name: str) -> int:
    short = name.split(".")[1] if name.count(".") else "__init__"
    for i, layer in enumerate(LAYERS):
        if short in layer:
            return i
    raise AssertionError(f"module {name} is in no layer of tests/test_structure.py: place it")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_small(name):
    source = MODULES[name].read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{name} has {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name} has {length} lines"


def test_no_import_circle_and_no_import_points_up():
    graph = {name: _imports(name) for name in MODULES}
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, upward
    # the package inits only re-export their own modules: a module importing its package is not a circle
    edges = {a: {b for b in targets if not (_is_package(b) and a.startswith(b + "."))} for a, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_layer_list_knows_every_module():
    for name in MODULES:
        _layer(name)


def test_the_trainer_is_small():
    tree = ast.parse(MODULES["ppl_vae.train"].read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    assert trainer.end_lineno - trainer.lineno + 1 <= 250


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_sources_pass_ruff(command):
    """`make lint` as a test, so that CI (which runs `make test`) keeps it green."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    folders = ["ppl_vae", "models", "guides", "tests", "examples", "benchmarks"]
    done = subprocess.run([ruff, *command, *folders], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
