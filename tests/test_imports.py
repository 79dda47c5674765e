"""The package's imports run one way: each module imports only from the layers above it in LAYERS.

Every ``import`` and ``from ... import`` of every module is read from its syntax tree, the ones inside
functions included (a lazy import is still a dependency), so a cycle or an import that runs upward
fails here instead of surfacing as an ImportError in a notebook.
"""

import ast
import pathlib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "course_utils"

# Top to bottom; a module may import only modules of *earlier* layers (none of its own layer).
LAYERS = (
    ("validation", "profiles", "analysis", "constants"),  # leaves: no course_utils imports at all
    ("data",),
    ("augment", "masking"),
    ("models.blocks", "models.common", "models.timm_weights"),
    ("models.vit",),
    ("models.token_learner", "models.cait", "models.patch_convnet", "models.focal_modulation",
     "models.temporal_latent_bottleneck"),
    ("models",),  # models/__init__.py: import_all() imports every paper module
    ("distribute", "flops"),
    ("training",),
    ("setup", "exercises", "viz", "pretrained"),
    ("runner",),
    ("__main__", "__init__"),
)
RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}


def module_name(path):
    """``course_utils/models/cait.py`` -> ``models.cait``; a package's ``__init__.py`` -> its package."""
    parts = list(path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path):
    """The course_utils modules that ``path`` imports, as ``module_name`` spells them."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from course_utils.models import cait` imports the module course_utils.models.cait when that
            # exists; `from course_utils.models import MODEL_MODULES` imports the package course_utils.models.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name.split(".", 1)[-1] in RANK else node.module for name in names]
        else:
            continue
        for name in names:
            if name == "course_utils":
                found.add("__init__")
            elif name.startswith("course_utils."):
                found.add(name.split(".", 1)[1])
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert set(MODULES) - {"__init__"} <= set(RANK), f"place these modules in LAYERS: {set(MODULES) - set(RANK)}"
    assert set(RANK) - {"__init__"} <= set(MODULES), f"LAYERS names modules that do not exist: {set(RANK) - set(MODULES)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward_only(module):
    upward = {imported: RANK[imported] for imported in imported_modules(MODULES[module]) if RANK[imported] >= RANK[module]}
    assert not upward, f"{module} (layer {RANK[module]}) imports from its own or a later layer: {upward}"


def test_there_is_no_import_cycle():
    graph = {module: imported_modules(path) for module, path in MODULES.items()}
    visiting, done = set(), set()

    def visit(module, trail):
        if module in visiting:
            raise AssertionError("import cycle: " + " -> ".join(trail + [module]))
        if module in done:
            return
        visiting.add(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_check_sees_lazy_and_from_imports(tmp_path):
    """The reader finds an import inside a function and tells a module from a name of a package."""
    source = tmp_path / "example.py"
    source.write_text(
        "from course_utils.models import cait, MODEL_MODULES\n"
        "def f():\n    import course_utils.training\n    from course_utils import viz\n"
    )
    assert imported_modules(source) == {"models.cait", "models", "training", "viz"}
