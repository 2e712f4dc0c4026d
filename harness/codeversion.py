"""Which version of the reference code produced a result.

A training's key includes the *code fingerprint* of the implementations it runs: the
dataset, the method, its network and optimiser (and, for a student, its teacher's and
the teacher's solver), each with the modules of its own package that it imports,
transitively. So editing a method's loss retrains it, instead of serving the numbers the
old loss produced; a record's key also includes its sampler's solver code.

A module's fingerprint hashes its syntax tree with docstrings removed: comments,
docstrings and formatting do not count, a changed expression does. Nothing is imported
to compute it (the source files are parsed), so planning stays free of torch.

The harness's own training loop is not fingerprinted (every edit of the runner would
invalidate every result); :data:`HARNESS_CODE` is an explicit version to bump when a
harness change alters numbers.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
from functools import cache
from typing import Any

from harness import registry as reg

HARNESS_CODE = 1


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def _module(name: str) -> tuple[str, tuple[str, ...]]:
    """(fingerprint, the same-package modules it imports) of module ``name``."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return "", ()
    with open(spec.origin, encoding="utf-8") as f:
        tree = _strip_docstrings(ast.parse(f.read(), spec.origin))
    package = name.split(".")[0]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            if node.module.split(".")[0] == package:  # ``from package import submodule``
                imported.update(f"{node.module}.{a.name}" for a in node.names if _is_submodule(node.module, a.name))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    own = tuple(sorted(m for m in imported if m.split(".")[0] == package and m != name))
    digest = hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()[:16]
    return digest, own


def _is_submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module file (found on disk, nothing executed)."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isfile(os.path.join(folder, f"{name}.py")) or os.path.isfile(
                os.path.join(folder, name, "__init__.py")):
            return True
    return False


def modules_of(name: str) -> dict[str, str]:
    """``name`` and every same-package module it imports, transitively, with fingerprints."""
    out: dict[str, str] = {}
    todo = [name]
    while todo:
        module = todo.pop()
        if module not in out:
            out[module], imported = _module(module)
            todo.extend(imported)
    return out


def _training_entries(dataset: dict, method: dict) -> tuple[tuple[str, str], ...]:
    """The (registry kind, name) pairs whose code a training of ``method`` on ``dataset`` runs."""
    entries = [("dataset", dataset["implementation"])]
    current: dict[str, Any] | None = method
    while current is not None:
        entries += [("method", current["implementation"]), ("network", current["network"]["name"]),
                    ("optimizer", current["optimizer"]["name"])]
        latent = current.get("latent")
        if latent is not None:  # the autoencoder is trained first: its code shapes the latents
            entries += [("autoencoder", latent["autoencoder"]["name"]), ("optimizer", latent["optimizer"]["name"])]
        teacher = current.get("teacher")
        if teacher is None:
            break
        entries.append(("solver", teacher["sampler"]["solver"]))  # the teacher's pairs come from it
        current = teacher["method"]
    return tuple(entries)


REGISTRIES = {"dataset": reg.DATASETS, "method": reg.METHODS, "network": reg.NETWORKS,
              "optimizer": reg.OPTIMIZERS, "solver": reg.SOLVERS, "autoencoder": reg.AUTOENCODERS}


@cache
def _modules_of_entries(entries: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    modules: dict[str, str] = {}
    for kind, name in entries:
        modules |= modules_of(REGISTRIES[kind].module_of(name))
    return tuple(sorted(modules.items()))


def training_modules(dataset: dict, method: dict) -> dict[str, str]:
    """The modules (with fingerprints) whose code a training of ``method`` on ``dataset``
    runs; both are canonical spec dicts as the plan and the records hold them."""
    return dict(_modules_of_entries(_training_entries(dataset, method)))


def fingerprint(modules: dict[str, str]) -> str:
    text = "\n".join(f"{m}={d}" for m, d in sorted(modules.items()))
    return hashlib.sha256(f"harness={HARNESS_CODE}\n{text}".encode()).hexdigest()[:16]


def training_code(dataset: dict, method: dict) -> str:
    return fingerprint(training_modules(dataset, method))


def evaluation_modules(sampler: dict) -> dict[str, str]:
    return dict(_modules_of_entries((("solver", sampler["solver"]),)))


def evaluation_code(sampler: dict) -> str:
    return fingerprint(evaluation_modules(sampler))


def record_code(spec: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(the ``code`` a record made now would carry, the modules behind it) for a record's spec."""
    train = training_modules(spec["dataset"], spec["method"])
    evaluation = evaluation_modules(spec["sampler"])
    return {"train": fingerprint(train), "eval": fingerprint(evaluation)}, {**train, **evaluation}


def changed_modules(stored: dict[str, str] | None, spec: dict) -> list[str]:
    """The modules whose fingerprint differs between a record's ``code_modules`` and the
    code as it stands (all of them when the record stored none)."""
    _, now = record_code(spec)
    stored = stored or {}
    return sorted(m for m in set(now) | set(stored) if now.get(m) != stored.get(m))
