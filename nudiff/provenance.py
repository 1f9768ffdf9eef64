"""What a run was made of: code version, configuration, packages, hardware, seeds, input data.

:func:`collect_provenance` gathers it into one JSON-ready dict; :func:`write_provenance`
writes it as JSON (for machines) and as an HTML page (for the Snakemake report). Nothing
here fails because the environment lacks something (no git, no CUDA, a package not
installed): the record says so instead.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import platform
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.tables import read_table

logger = logging.getLogger(__name__)

PACKAGES = (
    "nudiff",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "pandas",
    "diffusers",
    "snakemake",
    "tifffile",
    "imagecodecs",
)
MANIFEST_COLUMNS = ("name", "split", "source_image", "source_label", "source_sha256")
SEED_KEYS = ("seed", "seeds")
NOT_INSTALLED = "not installed"
_GIT_TIMEOUT_S = 30
_MAX_DIRTY_PATHS = 50


def _git(repo_dir: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True
    )
    return done.stdout


def git_state(repo_dir: str | os.PathLike) -> dict[str, Any]:
    """``{"commit", "dirty", "changed"}`` of the work tree at ``repo_dir``.

    ``dirty`` counts modified and untracked (not ignored) files; ``changed`` lists up to
    50 of them as ``git status --porcelain`` prints them. Without git or outside a
    repository, ``commit`` and ``dirty`` are None and ``note`` says why.
    """
    repo_dir = Path(repo_dir)
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD").strip()
        changed = _git(repo_dir, "status", "--porcelain").splitlines()
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "note": "git is not installed"}
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", "") or "").strip() or str(exc)
        return {"commit": None, "dirty": None, "note": f"{repo_dir} is not a git repository (or git failed): {detail}"}
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:_MAX_DIRTY_PATHS]}


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python's version and each distribution's, ``"not installed"`` where absent."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info() -> dict[str, Any]:
    """CPU model and cores; CUDA device names, CUDA and cuDNN versions when torch sees any."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "platform": platform.platform()}
    if hasattr(os, "sched_getaffinity"):
        info["cpu_cores_usable"] = len(os.sched_getaffinity(0))
    try:
        import torch
    except ImportError:
        info["cuda"] = "no CUDA device (torch not installed)"
        return info
    if not torch.cuda.is_available():
        info["cuda"] = "no CUDA device"
        return info
    info["cuda"] = {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
    }
    return info


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key in SEED_KEYS:
                yield child, value
            yield from _walk(value, child)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def find_seeds(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every value under a key named ``seed`` or ``seeds``, by dotted path.

    ``{"features": {"seed": 0}, "runs": [{"seeds": [1, 2]}]}`` gives
    ``{"features.seed": 0, "runs[0].seeds": [1, 2]}``.
    """
    return dict(_walk(config, ""))


def _manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "manifest.csv" if path.is_dir() else path


def manifest_checksums(path: str | os.PathLike) -> dict[str, Any]:
    """Per-image source checksums of a prepared dataset and one digest over them all.

    Args:
        path: a prepared dataset's ``manifest.csv`` (or its folder); columns used:
            ``name, split, source_image, source_label, source_sha256``.

    Returns:
        ``{"manifest", "n_images", "combined_sha256", "images": [{name, split, sha256,
        source_image, source_label}, ...]}``, images sorted by name. The combined digest
        is the sha256 of the lines ``name<TAB>split<TAB>sha256``, sorted by name, so it
        does not depend on row order or on where the sources lie.

    Raises:
        InputDataError: naming the manifest, when missing, unreadable, lacking a column,
            or holding an empty checksum or a duplicate name.
    """
    path = _manifest_path(path)
    table = read_table(path, required=MANIFEST_COLUMNS, what="manifest", dtype=str)
    if (table["source_sha256"].str.len() == 0).any() or table["name"].duplicated().any():
        raise InputDataError(f"{path}: empty source_sha256 or duplicate name")
    table = table.sort_values("name", kind="stable")
    lines = "".join(f"{r.name}\t{r.split}\t{r.source_sha256}\n" for r in table.itertuples())
    return {
        "manifest": str(path),
        "n_images": len(table),
        "combined_sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest(),
        "images": [
            {
                "name": r.name,
                "split": r.split,
                "sha256": r.source_sha256,
                "source_image": r.source_image,
                "source_label": r.source_label,
            }
            for r in table.itertuples()
        ],
    }


def _jsonable(value: Any) -> Any:
    """The config as plain JSON types (Snakemake configs can hold Paths, tuples, numpy)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def collect_provenance(
    *,
    config: Mapping[str, Any],
    manifests: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    repo_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Everything needed to say what produced a run's results.

    Args:
        config: the workflow configuration as run.
        manifests: prepared datasets' ``manifest.csv`` files (or their folders); a mapping
            names them (dataset -> manifest), a list is keyed by each manifest's folder.
        repo_dir: the workflow's folder (its git commit is recorded).

    Returns:
        JSON-ready dict with keys ``created_utc, hostname, git, packages, devices, seeds,
        data, config`` (``data``: dataset -> :func:`manifest_checksums`).
    """
    if not isinstance(manifests, Mapping):
        manifests = {str(_manifest_path(m).parent): m for m in manifests}
    config = _jsonable(config)
    prov = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "git": git_state(repo_dir),
        "packages": package_versions(),
        "devices": device_info(),
        "seeds": find_seeds(config),
        "data": {name: manifest_checksums(path) for name, path in manifests.items()},
        "config": config,
    }
    logger.info(
        "provenance: commit %s, %d dataset(s), %d seed key(s)",
        prov["git"]["commit"],
        len(prov["data"]),
        len(prov["seeds"]),
    )
    return prov


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
td { font-family: ui-monospace, monospace; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.warn { color: #a33; }
"""


def render_provenance_html(prov: Mapping[str, Any]) -> str:
    """A readable page: run, code, devices, packages, seeds, input data, config (YAML)."""
    esc = html.escape
    git = prov["git"]
    if git.get("commit"):
        state = "<span class='warn'>dirty (uncommitted changes)</span>" if git["dirty"] else "clean"
        code = f"<p>commit <code>{esc(git['commit'])}</code>, work tree {state}</p>"
        if git.get("changed"):
            code += f"<pre>{esc(chr(10).join(git['changed']))}</pre>"
    else:
        code = f"<p class='warn'>{esc(git.get('note', 'no git information'))}</p>"
    devices = prov["devices"]
    cuda = devices["cuda"]
    device_rows = [(k, v) for k, v in devices.items() if k != "cuda"]
    if isinstance(cuda, Mapping):
        device_rows += [(f"CUDA device {i}", n) for i, n in enumerate(cuda["devices"])]
        device_rows += [("CUDA", cuda["cuda_version"]), ("cuDNN", cuda["cudnn_version"])]
    else:
        device_rows.append(("CUDA", cuda))
    data = []
    for name, entry in prov["data"].items():
        data.append(
            f"<h3>{esc(name)}</h3><p>{entry['n_images']} images, combined sha256 "
            f"<code>{esc(entry['combined_sha256'])}</code> ({esc(entry['manifest'])})</p>"
        )
        data.append(
            _table([(i["name"], i["split"], i["sha256"]) for i in entry["images"]], ("name", "split", "source sha256"))
        )
    seeds = [(k, json.dumps(v)) for k, v in prov["seeds"].items()]
    sections = [
        ("Run", _table([("created (UTC)", prov["created_utc"]), ("host", prov["hostname"])], ("", ""))),
        ("Code", code),
        ("Devices", _table(device_rows, ("", ""))),
        ("Packages", _table(list(prov["packages"].items()), ("package", "version"))),
        ("Seeds", _table(seeds, ("config key", "value")) if seeds else "<p>no seed keys</p>"),
        ("Input data", "".join(data) or "<p>no manifests</p>"),
        ("Configuration", f"<pre>{esc(yaml.safe_dump(prov['config'], sort_keys=False))}</pre>"),
    ]
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in sections)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Provenance</title>"
        f"<style>{_CSS}</style></head><body><h1>Provenance of this run</h1>{body}"
        f"</body></html>\n"
    )


def write_provenance(prov: Mapping[str, Any], out_json: str | os.PathLike, out_html: str | os.PathLike) -> None:
    """Write ``prov`` as indented JSON and as an HTML page, each atomically."""
    text = json.dumps(prov, indent=2, allow_nan=False) + "\n"
    page = render_provenance_html(prov)
    with atomic_path(out_json) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")


def record_provenance(
    config: Mapping[str, Any],
    manifests: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    repo_dir: str | os.PathLike,
    out_json: str | os.PathLike,
    out_html: str | os.PathLike,
) -> dict[str, Any]:
    """Rule ``record_provenance``: :func:`collect_provenance` then :func:`write_provenance`."""
    prov = collect_provenance(config=config, manifests=manifests, repo_dir=repo_dir)
    write_provenance(prov, out_json, out_html)
    return prov
