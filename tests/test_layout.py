"""Where things live: the import directions between modules.

* nothing in ``mstein_fast/ops/`` imports :mod:`mstein_fast.distributed` (the distributed loss
  builds on the ops, not the other way round), and :mod:`mstein_fast.errors` imports nothing of
  the package (every module may import it);
* :mod:`mstein_fast.config` does not import :mod:`mstein_fast.models`, and the models and the
  augmenter do not import :mod:`mstein_fast.config`: both sides import the typed contracts of
  :mod:`mstein_fast.contracts`, which imports nothing of the package;
* ``mstein_fast.ops.<op>`` is the function; its module is the private ``_<op>``;
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


@pytest.mark.parametrize("path", sorted((PACKAGE / "ops").glob("*.py")), ids=lambda p: p.name)
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
