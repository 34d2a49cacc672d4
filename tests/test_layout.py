"""Where things live: the import directions between modules.

* nothing in ``mstein_fast/ops/`` imports :mod:`mstein_fast.distributed` (the public namespace of
  the distributed losses re-exports from the ops, not the other way round), and
  :mod:`mstein_fast.errors` imports nothing of the package (every module may import it);
* the Triton kernels (``kernels/``, installed as ``mstein_fast.kernels``) import nothing of the
  package but :mod:`mstein_fast.numerics`: the ops import the kernels, never the reverse;
* :mod:`mstein_fast.config` does not import :mod:`mstein_fast.models`, and the models and the
  augmenter do not import :mod:`mstein_fast.config`: both sides import the typed contracts of
  :mod:`mstein_fast.contracts`, which imports nothing of the package;
* ``mstein_fast.ops.<op>`` is the function; its package is the private ``_<op>/``, which holds
  the dispatch and every backend's form of the op (``cpu.py``, ``triton.py``, ...); the encoder
  internals are in :mod:`mstein_fast.nn`; :mod:`mstein_fast.distributed` only re-exports;
"""
from __future__ import annotations

import ast
import importlib
import pathlib
import re
import types

import pytest

import mstein_fast
import mstein_fast.ops

PACKAGE = pathlib.Path(mstein_fast.__file__).parent


def imported_modules(source: str, package: str) -> set[str]:
    """Every module that ``source`` (a module of ``package``) imports, at any depth of its code
    (``from a import b`` counts as ``a`` and ``a.b``; relative imports are resolved)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imports_of(path: pathlib.Path) -> set[str]:
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    return imported_modules(path.read_text(encoding="utf-8"), package)


def is_distributed(name: str) -> bool:
    return name == "mstein_fast.distributed" or name.startswith("mstein_fast.distributed.")


@pytest.mark.parametrize("path", sorted((PACKAGE / "ops").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_ops_do_not_import_distributed(path):
    assert not [n for n in imports_of(path) if is_distributed(n)]


@pytest.mark.parametrize("source", [
    "import mstein_fast.distributed",
    "import mstein_fast.distributed as d",
    "from mstein_fast import distributed",
    "from mstein_fast.distributed import wasserstein_infonce",
    "from .. import distributed",
    "from ..distributed import world",
    "def f():\n    if True:\n        from mstein_fast import distributed\n",
])
def test_the_import_check_sees_every_form(source):
    # the check above would pass vacuously if imported_modules missed a form of import
    assert [n for n in imported_modules(source, "mstein_fast.ops") if is_distributed(n)]


def test_errors_import_nothing_of_the_package():
    assert not [n for n in imports_of(PACKAGE / "errors.py") if n.startswith("mstein_fast")]


def is_models(name: str) -> bool:
    return name == "mstein_fast.models" or name.startswith("mstein_fast.models.")


def test_config_does_not_import_the_models():
    # the registry depends on the configuration's names (mstein_fast.contracts), not the reverse
    assert not [n for n in imports_of(PACKAGE / "config.py") if is_models(n)]
    assert [n for n in imported_modules("from mstein_fast.models.registry import MODELS", "mstein_fast") if is_models(n)]


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")) + [PACKAGE / "augment.py"],
                         ids=lambda p: p.name)
def test_models_and_the_augmenter_do_not_import_the_run_config(path):
    # they take the typed ModelConfig / AugmentConfig of mstein_fast.contracts, never a TrainConfig
    assert "mstein_fast.config" not in imports_of(path)


def test_the_contracts_and_compat_import_nothing_of_the_package_at_run_time():
    for name in ("contracts.py", "compat.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        # imports under `if TYPE_CHECKING:` are annotations only
        checked = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
        found = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 and id(node) not in checked and "mstein_fast" in ast.unparse(node)]
        assert not found, (name, [ast.unparse(n) for n in found])


@pytest.mark.parametrize("op", ["pairwise_w2", "wasserstein_infonce"])
def test_ops_names_are_the_functions_and_their_modules_private(op):
    function = getattr(mstein_fast.ops, op)
    assert callable(function) and not isinstance(function, types.ModuleType)
    assert function is getattr(mstein_fast, op)
    module = importlib.import_module(f"mstein_fast.ops._{op}")
    assert getattr(module, op) is function


ROOT = pathlib.Path(__file__).resolve().parents[1]
OP_FILES = {"pairwise_w2": ["__init__.py", "cpu.py", "triton.py"],
            "wasserstein_infonce": ["__init__.py", "cpu.py", "triton.py", "rect.py", "distributed.py"]}


@pytest.mark.parametrize("op", sorted(OP_FILES))
def test_each_op_has_one_package_with_every_backend(op):
    folder = PACKAGE / "ops" / f"_{op}"
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(OP_FILES[op])
    assert getattr(importlib.import_module(f"mstein_fast.ops._{op}"), op) is getattr(mstein_fast.ops, op)
    # the Triton path's registration lives with the op, not with the kernels
    assert "define_op" in (folder / "triton.py").read_text(encoding="utf-8")
    assert "define_op" not in (ROOT / "kernels" / f"{op}.py").read_text(encoding="utf-8")


def test_the_encoder_internals_are_in_nn_not_ops():
    modules = ["activations", "dropout", "linear", "residual_norm"]
    assert all((PACKAGE / "nn" / f"{m}.py").is_file() and not (PACKAGE / "ops" / f"{m}.py").exists() for m in modules)


@pytest.mark.parametrize("path", sorted((PACKAGE / "nn").rglob("*.py")) + [PACKAGE / "evaluate.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_encoder_internals_and_the_evaluator_do_not_import_the_ops(path):
    # what they share with the ops (the extension, its thread count, output buffers) is backends'
    assert not [n for n in imports_of(path) if n == "mstein_fast.ops" or n.startswith("mstein_fast.ops.")]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_private_name_of_another_module(path):
    # a leading underscore means "this module's own": a module of the same package may share it
    # (nn/residual_norm.py uses nn/dropout.py's threshold), another package may not
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    wrong = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mstein_fast"):
            source_package = node.module.rsplit(".", 1)[0] if "." in node.module else node.module
            private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
            if private and source_package != package and node.module != package:
                wrong.append((node.module, private))
    assert not wrong


def kernel_imports(source: str) -> set[str]:
    """The modules of the package that ``source``, a module of ``mstein_fast.kernels``, imports at any
    depth of its code (relative imports resolved; ``from mstein_fast import x`` counts as ``mstein_fast.x``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = "mstein_fast" if node.level > 1 else "mstein_fast.kernels"  # kernels/ is one level deep
                base = f"{parent}.{base}" if base else parent
            names.update([f"{base}.{alias.name}" for alias in node.names] if base == "mstein_fast" else [base])
    return {n for n in names if n == "mstein_fast" or n.startswith("mstein_fast.")}


def allowed_in_kernels(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in ("mstein_fast.numerics", "mstein_fast.kernels"))


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").rglob("*.py")), ids=lambda p: p.name)
def test_kernels_import_only_the_numerics_of_the_package(path):
    assert not [n for n in kernel_imports(path.read_text(encoding="utf-8")) if not allowed_in_kernels(n)]


@pytest.mark.parametrize("source", [
    "import mstein_fast",
    "import mstein_fast.reference",
    "from mstein_fast import reference",
    "from mstein_fast.library import define_op",
    "from .. import library",
    "def f():\n    from mstein_fast.backends import triton_kernels\n",
])
def test_the_kernel_import_check_sees_every_form(source):
    assert [n for n in kernel_imports(source) if not allowed_in_kernels(n)]
    assert not [n for n in kernel_imports("from mstein_fast.numerics import COV_FLOOR\nfrom ._common import empty\n"
                                          "from . import pairwise_w2\n") if not allowed_in_kernels(n)]


def test_distributed_is_a_namespace_without_code():
    # the distributed losses live with their ops and the collectives in mstein_fast.collectives
    tree = ast.parse((PACKAGE / "distributed.py").read_text(encoding="utf-8"))
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        exports = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
        assert docstring or exports or isinstance(node, (ast.Import, ast.ImportFrom)), ast.unparse(node)
    import mstein_fast.distributed as public
    for name in ("wasserstein_infonce", "dot_infonce", "world", "comm_device", "all_gather_rows", "gather_with_grad"):
        assert callable(getattr(public, name)) and name in public.__all__
    assert not [n for n in imports_of(PACKAGE / "collectives.py") if n.startswith("mstein_fast")]


# pointers to documents outside the repository (a design brief's sections, tracker issues)
OUTSIDE = re.compile(r"\bSPEC\b|\bissues? \d+|\(issue\b")


def test_sources_point_only_to_documents_in_the_repository():
    sources = [p for folder in ("mstein_fast", "kernels", "csrc", "tests", "benchmarks")
               for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".h", ".cpp", ".sh")]
    assert len(sources) > 30
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in sources
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)
             and p.name != "test_layout.py"]
    assert not found, "\n".join(found)
    docs = {m.group(1) for p in sources for m in re.finditer(r"docs/(\w+\.md)", p.read_text())}
    assert docs and all((ROOT / "docs" / name).is_file() for name in docs), docs
