"""One name per step: rule X runs workflow_scripts/X.py, which calls nudiff's function X."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Rules that are one configuration of a shared step: (script, function) they run.
SHARED_STEP = {
    "train_structure_model": ("train_diffusion_model", "train_diffusion_model"),
    "train_image_model_conditional": ("train_diffusion_model", "train_diffusion_model"),
    "train_image_model_guided": ("train_diffusion_model", "train_diffusion_model"),
    # the structures of the sampler comparison, sampled like those of sample_structures
    "sample_sampler_comparison": ("sample_sampler_comparison", "sample_structures"),
    # more pairs from finished models: the pairs' sampling with its own noise streams
    "sample_extra_structures": ("sample_extra_structures", "sample_structures"),
    "sample_extra_images": ("sample_extra_images", "sample_images"),
}


def rule_scripts() -> dict[str, str]:
    """Rule name -> the name of the script it runs."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule )", smk.read_text(), flags=re.MULTILINE)[1:]:
            name = re.match(r"rule (\w+):", block)[1]
            out[name] = re.search(r'script:\s*"\.\./workflow_scripts/(\w+)\.py"', block)[1]
    return out


def test_every_rule_script_and_function_share_a_name():
    scripts = rule_scripts()
    assert len(scripts) >= 25
    wrong = []
    for rule, script in sorted(scripts.items()):
        want_script, function = SHARED_STEP.get(rule, (rule, rule))
        code = (REPO / "workflow_scripts" / f"{script}.py").read_text()
        imported = re.search(rf"^from nudiff\S* import .*\b{function}\b", code, re.MULTILINE)
        called = re.search(rf"^(\w+ = )?{function}\(", code, re.MULTILINE)
        if script != want_script or not (imported and called):
            wrong.append(f"rule {rule}: script {script}.py, want {want_script}.py calling nudiff's {function}()")
    assert not wrong, "\n".join(wrong)


def test_every_script_belongs_to_a_rule():
    scripts = {path.stem for path in (REPO / "workflow_scripts").glob("*.py")}
    assert scripts == set(rule_scripts().values())


def defined_names(module: str) -> set[str]:
    """Top-level names a nudiff module defines, read from its source (importing the
    diffusion modules takes a minute on a loaded 2-core machine)."""
    path = REPO / Path(*module.split("."))
    source = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    names = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def test_every_script_imports_names_that_exist():
    """A rename that missed a script fails here, not in the middle of a run."""
    missing = []
    for path in sorted((REPO / "workflow_scripts").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module.startswith("nudiff"):
                absent = {alias.name for alias in node.names} - defined_names(node.module)
                missing += [f"{path.name}: {node.module}.{name}" for name in sorted(absent)]
    assert not missing, missing
