"""The layer rules of ARCHITECTURE.md, checked by parsing every module, and the promise that
importing the packages loads nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("retrieval", "index", "generation", "cli", "api")

FORBIDDEN = {
    "index": {"retrieval", "generation", "cli", "api", "typer", "fastapi", "torch", "open_clip", "librosa"},
    "generation": {"retrieval", "index", "cli", "api", "typer", "fastapi"},
    "retrieval": {"cli", "api", "typer", "fastapi", "uvicorn"},
    "cli": {"api", "fastapi"},
    "api": {"cli", "typer"},
}
# The one exception the architecture allows: an optional GPU brute-force backend inside index/.
TORCH_ALLOWED_IN_INDEX = ("gpu",)


def imported_roots(path: Path) -> set[str]:
    """Top-level package names imported anywhere in a module (nested imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def modules_of(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py")) if (REPO / package).is_dir() else []


def test_every_package_respects_its_import_rules():
    violations = []
    checked = 0
    for package in PACKAGES:
        for module in modules_of(package):
            checked += 1
            forbidden = set(FORBIDDEN[package])
            if package == "index" and any(word in module.stem for word in TORCH_ALLOWED_IN_INDEX):
                forbidden.discard("torch")
            for name in imported_roots(module) & forbidden:
                violations.append(f"{module.relative_to(REPO)} imports {name}")
    assert checked > 20, "the layer test found too few modules; did the layout change?"
    assert not violations, "layer rule broken:\n" + "\n".join(violations)


def test_the_rule_checker_catches_a_forbidden_import(tmp_path):
    # Guard against a checker that silently passes: a nested import must be seen.
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from retrieval.engine import SearchEngine\n    import torch.nn\n")
    assert imported_roots(module) >= {"retrieval", "torch"}


def test_importing_the_packages_loads_no_torch_faiss_or_weights():
    code = (
        "import sys, retrieval, retrieval.encoders, retrieval.compose, retrieval.indexing.workers, index, "
        "index.collection, index.backends, generation, cli.main\n"
        "heavy = [m for m in ('torch', 'faiss', 'open_clip', 'librosa', 'pymilvus') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "", f"heavy modules imported at import time: {result.stdout.strip()}"
