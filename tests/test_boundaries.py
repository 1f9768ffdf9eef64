"""The stages' import boundaries: the diffusion stage never imports the segmentation stage (what
judges synthetic pairs with a segmenter lives in nudiff.assessment), and segmentation's
augmentation does not load the diffusion models."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nudiff

PACKAGE = Path(nudiff.__file__).parent
# what nudiff.diffusion may not reach: the segmenter, or the package that imports it
FORBIDDEN = ("nudiff.segmentation", "nudiff.assessment")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # "from nudiff import segmentation" names the module through its alias
            names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return names


def reaches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules_after_import(*modules: str) -> list[str]:
    """Every module loaded by importing ``modules`` in a fresh interpreter (this nudiff's)."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "import json; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def diffusion_modules() -> list[str]:
    return sorted(
        "nudiff.diffusion" + ("" if p.stem == "__init__" else f".{p.stem}")
        for p in (PACKAGE / "diffusion").glob("*.py")
    )


def test_no_diffusion_module_names_the_segmentation_stage():
    offending = {
        str(path.relative_to(PACKAGE.parent)): sorted(m for m in imported_modules(path) if reaches(m, FORBIDDEN))
        for path in sorted((PACKAGE / "diffusion").rglob("*.py"))
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_importing_every_diffusion_module_loads_no_segmentation_module():
    """Also through other nudiff modules: the whole import graph, not only the direct imports."""
    loaded = modules_after_import(*diffusion_modules())
    assert "nudiff.diffusion.training" in loaded  # the check ran on the real package
    assert [m for m in loaded if reaches(m, FORBIDDEN)] == []


def test_segmentation_augmentation_does_not_load_the_diffusion_stage():
    """Nor what only the diffusion models and the figures need (diffusers, matplotlib)."""
    loaded = modules_after_import("nudiff.segmentation.augment")
    assert "nudiff.imaging" in loaded
    assert [m for m in loaded if reaches(m, ("nudiff.diffusion", "diffusers", "matplotlib"))] == []
