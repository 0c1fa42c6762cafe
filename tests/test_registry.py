"""The registry and bench never hide an import error; optional dependencies disable with the install command."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from mlcanon import bench, registry
from mlcanon.cli import main
from mlcanon.errors import UserError


@pytest.mark.parametrize("module", registry._MODULES + bench._MODULES)
def test_every_registered_and_bench_module_imports(module):
    importlib.import_module(module)


def test_no_recorded_import_errors():
    assert registry.import_errors() == {}


def test_a_broken_module_is_shown_not_hidden(monkeypatch, capsys):
    monkeypatch.setattr(registry, "_MODULES", [*registry._MODULES, "mlcanon.no_such_module"])
    monkeypatch.setattr(registry, "_LOADED", False)
    monkeypatch.setattr(registry, "_IMPORT_ERRORS", {})
    assert main(["list"]) == 1
    captured = capsys.readouterr()
    assert "classifier" in captured.out                        # the others are still listed
    assert "mlcanon.no_such_module" in captured.err and "No module named" in captured.err
    with pytest.raises(UserError, match="mlcanon.no_such_module failed to import"):
        registry.get("no-such-algorithm")


def test_missing_optional_dependency_disables_with_install_hint(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "networkx" else real(name, *a))
    main(["list"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("gcn-karate"))
    assert "pip install 'mlcanon[graph]'" in line
    assert main(["train", "gcn-karate"]) == 2
    assert "pip install 'mlcanon[graph]'" in capsys.readouterr().err


def test_only_declared_optional_dependencies_may_be_required():
    with pytest.raises(ValueError, match="not a declared optional dependency"):
        registry.register("x", family="f", config=object, description="d", requires=("numpy",))


def test_module_lists_name_each_module_once():
    assert len(set(registry._MODULES)) == len(registry._MODULES)
    assert len(set(bench._MODULES)) == len(bench._MODULES)
