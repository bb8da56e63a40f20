"""The Colab notebooks, both executed end to end and checked statically.

Each is executed with nbclient at tiny settings, injected papermill-style after its
"parameters" cell, in a temporary folder: scripts/colab_quickstart.ipynb on the demo
data, scripts/colab_gldv2.ipynb on a fake GLDv2 mirror (file://, the official layout,
tests/fake_gldv2.py) with the baseline CNN on the CPU, so its download, prepare,
train, evaluate and export cells run; its accelerator paths (mixed precision, TPU) do
not. Both are also validated, compiled cell by cell, and checked for lmrec names that
no longer exist.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import typing

import nbformat
import pytest

from lmrec import config as config_lib
from lmrec import distribute, run_files
from lmrec.models import backbones
from tests import fake_gldv2
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

QUICKSTART = REPO / "scripts" / "colab_quickstart.ipynb"
GLDV2 = REPO / "scripts" / "colab_gldv2.ipynb"
NOTEBOOKS = [QUICKSTART, GLDV2]

# The demo at tiny settings: 8 classes x 12 photos of 48 px, trained at 32 px for 1 + 1 epochs.
TINY = {
    "DEMO_IMAGES_PER_CLASS": 12,
    "DEMO_IMAGE_SIZE": 48,
    "IMAGE_SIZE": 32,
    "BATCH_SIZE": 16,
    "EPOCHS_FROZEN": 1,
    "EPOCHS_FINETUNE": 1,
    "NUM_PHOTOS": 3,
}
CELL_TIMEOUT_S = 300  # per cell; the whole notebook takes about 50 s on a 2-core CPU


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def _inject_parameters(nb, parameters: dict) -> None:
    """What papermill does: a cell of assignments right after the 'parameters' cell."""
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_index(nb) + 1, cell)


def _python_source(source: str) -> str | None:
    """A code cell as plain Python: IPython's !shell and %magic lines become `pass`.

    Returns None for a cell magic (%%bash ...), whose body is not Python.
    """
    if source.lstrip().startswith("%%"):
        return None
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def _kernelspec_of_this_python(jupyter_dir) -> str:
    """A kernelspec that runs ipykernel with this very interpreter; returns its name.

    ipykernel's own "python3" spec (in the venv's share/jupyter) would do too, but a user's
    ~/.local/share/jupyter/kernels/python3 can point at another Python without lmrec.
    """
    name = "lmrec-test-python"
    spec_dir = jupyter_dir / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lmrec tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return name


def _execute(path, parameters: dict, cwd, jupyter_dir):
    """Runs a notebook in a fresh kernel in `cwd`, `parameters` injected; returns it executed."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    _inject_parameters(nb, parameters)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(jupyter_dir))  # searched before every other kernel dir
        client = NotebookClient(
            nb,
            kernel_name=_kernelspec_of_this_python(jupyter_dir),
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()
    return nb


@pytest.fixture(scope="module")
def executed_quickstart(tmp_path_factory):
    """The quick start executed in a fresh kernel, in a temporary working folder."""
    cwd = tmp_path_factory.mktemp("colab_quickstart")
    work_dir = cwd / "work"
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    nb = _execute(QUICKSTART, {**TINY, "WORK_DIR": str(work_dir)}, cwd, jupyter_dir)
    return nb, cwd, work_dir


# The GLDv2 notebook's subset on a fake mirror: three landmarks of 10 photos each, spread
# over two tars, and a fourth with too few photos for MIN_IMAGES_PER_CLASS.
GLDV2_LANDMARKS = {
    101: ("Eiffel_Tower", 10, (200, 60, 40)),
    202: ("Ha_Long_Bay", 10, (40, 160, 200)),
    303: ("Golden_Gate_Bridge", 10, (220, 200, 40)),
    404: ("Too_Few_Photos", 3, (90, 90, 90)),
}
GLDV2_TINY = {
    "GLDV2_CSV": "train_clean",
    "GLDV2_TARS": "0-1",
    "MIN_IMAGES_PER_CLASS": 8,
    "NUM_CLASSES": 3,
    "MAX_IMAGES_PER_CLASS": 0,
    "DATA_NAME": "gld3",
    "BACKBONE": "baseline",
    "WEIGHTS": "none",
    "IMAGE_SIZE": 32,
    "UNFREEZE_FROM": "",
    "BATCH_SIZE": 8,
    "EPOCHS_FROZEN": 1,
    "EPOCHS_FINETUNE": 1,
    "STRATEGY": "default",
    "MIXED_PRECISION": "none",
}


def _write_gldv2_mirror(root) -> dict[str, int]:
    """The fake mirror (file://); returns every image id with its landmark."""
    landmark_of, tars = {}, {0: {}, 1: {}}
    for landmark, (_, count, color) in GLDV2_LANDMARKS.items():
        for i in range(count):
            image_id = hashlib.md5(f"{landmark}-{i}".encode()).hexdigest()[:16]
            shade = tuple(min(255, c + 4 * i) for c in color)
            tars[i % 2][image_id] = (fake_gldv2.jpeg(shade, size=(48, 40)), landmark)
            landmark_of[image_id] = landmark
    categories = {landmark: name for landmark, (name, _, _) in GLDV2_LANDMARKS.items()}
    fake_gldv2.write_mirror(root, tars, categories, prefixed=frozenset({1}))
    return landmark_of


@pytest.fixture(scope="module")
def executed_gldv2(tmp_path_factory):
    """The GLDv2 notebook run end to end on a file:// mirror, at tiny settings on the CPU."""
    cwd = tmp_path_factory.mktemp("colab_gldv2")
    landmark_of = _write_gldv2_mirror(cwd / "mirror")
    parameters = {
        **GLDV2_TINY,
        "GLDV2_DIR": str(cwd / "gldv2"),
        "GLDV2_URL": (cwd / "mirror").as_uri(),
        "RECORDS_DIR": str(cwd / "tf_records"),
        "DRIVE_DIR": str(cwd / "drive"),
    }
    nb = _execute(GLDV2, parameters, cwd, tmp_path_factory.mktemp("jupyter"))
    return nb, cwd, landmark_of


def _outputs(nb, cell_id: str) -> list:
    return next(cell for cell in nb.cells if cell.get("id") == cell_id).outputs


def _stdout(nb, cell_id: str) -> str:
    return "".join(
        o.get("text", "")
        for o in _outputs(nb, cell_id)
        if o.output_type == "stream" and o.name == "stdout"
    )


def test_quickstart_runs_and_writes_every_result(executed_quickstart):
    nb, cwd, work_dir = executed_quickstart
    summary = json.loads(_stdout(nb, "summary"))
    # Everything went under WORK_DIR, nothing next to it or into the repository.
    assert sorted(os.listdir(cwd)) == ["work"]
    assert not (REPO / "lmrec_quickstart").exists()
    for key in ("model_dir", "report", "gradcam_grid", "export", "tags"):
        assert os.path.abspath(summary[key]).startswith(str(work_dir)), (key, summary[key])

    report = open(summary["report"], encoding="utf-8").read()
    metrics = json.load(open(os.path.join(os.path.dirname(summary["report"]), "metrics.json")))
    assert re.search(r"accuracy</t[dh]>\s*<td>", report), "no accuracy row in report.html"
    assert summary["accuracy"] == round(metrics["accuracy"], 4)
    assert metrics["num_images"] == 8 * round(TINY["DEMO_IMAGES_PER_CLASS"] * 0.2)

    assert os.path.isfile(os.path.join(summary["export"], "saved_model.pb"))
    with open(summary["gradcam_grid"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(summary["tags"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TINY["NUM_PHOTOS"] == summary["photos_tagged"]
    assert all(row["label"] and not row["error"] for row in rows)


def test_quickstart_shows_the_report_and_figures_inline(executed_quickstart):
    nb, _, _ = executed_quickstart
    evaluate_outputs = _outputs(nb, "evaluate")
    html = [o.data["text/html"] for o in evaluate_outputs if "text/html" in o.get("data", {})]
    assert len(html) == 1 and html[0].startswith("<iframe srcdoc=")
    pngs = [o for o in evaluate_outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # confusion matrix and reliability diagram
    for cell_id in ("train", "gradcam"):
        assert any("image/png" in o.get("data", {}) for o in _outputs(nb, cell_id)), cell_id
    assert "accuracy" in _stdout(nb, "evaluate")


def test_quickstart_install_cell_does_nothing_outside_colab(executed_quickstart):
    nb, _, _ = executed_quickstart
    assert _outputs(nb, "install") == []


def test_quickstart_trains_what_configs_demo_cfg_says(executed_quickstart):
    """The notebook builds its config from dataclasses; it must stay configs/demo.cfg."""
    nb, _, work_dir = executed_quickstart
    model_dir = json.loads(_stdout(nb, "summary"))["model_dir"]
    ran = config_lib.load_experiment(os.path.join(model_dir, "config.json"))
    overrides = {
        "output_dir": work_dir / "tf_records",
        "data_dir": work_dir / "tf_records" / "demo",
        "model_dir": work_dir / "runs" / "demo",
        "export_dir": work_dir / "export",
        "demo_images_per_class": TINY["DEMO_IMAGES_PER_CLASS"],
        "demo_image_size": TINY["DEMO_IMAGE_SIZE"],
        "image_size": TINY["IMAGE_SIZE"],
        "batch_size": TINY["BATCH_SIZE"],
        "epochs_frozen": TINY["EPOCHS_FROZEN"],
        "epochs_finetune": TINY["EPOCHS_FINETUNE"],
        # The notebook evaluates and exports in cells of their own.
        "evaluate_after": "false",
        "export_after": "false",
    }
    expected = config_lib.experiment_from_flagfile(
        str(REPO / "configs" / "demo.cfg"), *(f"--{k}={v}" for k, v in overrides.items())
    )
    differences = {
        f"{section}.{name}": (value, expected.to_dict()[section][name])
        for section, values in ran.to_dict().items()
        for name, value in values.items()
        if value != expected.to_dict()[section][name]
    }
    assert differences == {}


def test_gldv2_notebook_runs_from_download_to_export(executed_gldv2):
    nb, cwd, landmark_of = executed_gldv2
    chosen = {
        landmark: name
        for landmark, (name, count, _) in GLDV2_LANDMARKS.items()
        if count >= GLDV2_TINY["MIN_IMAGES_PER_CLASS"]
    }
    assert len(chosen) == GLDV2_TINY["NUM_CLASSES"] < len(GLDV2_LANDMARKS)
    names = set(chosen.values())

    # Download: the selection's photos from both tars (one stores train/a/b/c/), nothing
    # of the landmark below MIN_IMAGES_PER_CLASS, and no tar left behind (keep_tars=False).
    wanted = {image_id for image_id, landmark in landmark_of.items() if landmark in chosen}
    assert {p.stem for p in (cwd / "gldv2" / "train").rglob("*.jpg")} == wanted
    assert not list((cwd / "gldv2").rglob("*.tar"))
    assert f"images wanted: {len(wanted)}, wanted but not found" in _stdout(nb, "download")

    # Prepare: the three landmarks by their category names, every photo in a split.
    data_dir = cwd / "tf_records" / GLDV2_TINY["DATA_NAME"]
    labels = json.loads((data_dir / "labels.json").read_text(encoding="utf-8"))
    assert {entry["name"] for entry in labels} == names
    assert {entry["landmark_id"] for entry in labels} == {str(landmark) for landmark in chosen}
    stats = json.loads((data_dir / "stats.json").read_text(encoding="utf-8"))
    assert stats["totals"]["train"] + stats["totals"]["val"] == len(wanted)

    # Train, on Drive: both phases' epochs, the curves shown inline.
    model_dir = cwd / "drive" / "runs" / f"{GLDV2_TINY['DATA_NAME']}_baseline"
    with open(model_dir / "history.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (model_dir / run_files.BEST_WEIGHTS).is_file()
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb, "train"))

    # Evaluate: the report (inline) over the validation split.
    metrics = json.loads((model_dir / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_images"] == stats["totals"]["val"]
    assert re.search(r"accuracy: 0\.\d{3}|accuracy: 1\.000", _stdout(nb, "evaluate"))
    assert any("text/html" in o.get("data", {}) for o in _outputs(nb, "evaluate"))

    # Export to Drive, then eight downloaded photos tagged with the three names.
    export = _stdout(nb, "export")
    saved_model = export.rsplit("SavedModel: ", 1)[1].strip()
    assert saved_model.startswith(str(cwd / "drive" / "export"))
    assert os.path.isfile(os.path.join(saved_model, "saved_model.pb"))
    tagged = re.findall(r"^[0-9a-f]{16}\.jpg: (\w+) \((?:0|1)\.\d\d\)$", export, re.M)
    assert len(tagged) == 8 and set(tagged) <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_clean_and_compiles(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    _parameters_index(nb)
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"{cell.id} has outputs"
        source = _python_source(cell.source)
        if source is not None:
            compile(source, f"{path.name}:{cell.id}", "exec")


def _imported_lmrec_names(tree: ast.AST) -> dict[str, object]:
    """Local name -> the lmrec module or object a cell's imports bind it to."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lmrec":
            module = importlib.import_module(node.module)
            for alias in node.names:
                try:
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    assert hasattr(module, alias.name), f"from {node.module} import {alias.name}"
                    value = getattr(module, alias.name)
                names[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lmrec":
                    module = importlib.import_module(alias.name)
                    if alias.asname:
                        names[alias.asname] = module
                    else:
                        names["lmrec"] = importlib.import_module("lmrec")
    return names


@dataclasses.dataclass(frozen=True)
class _Instance:
    """A value of a known lmrec class (what a call returned), not the class itself."""

    cls: type


def _has(owner, attribute: str) -> bool:
    if dataclasses.is_dataclass(owner) and attribute in {f.name for f in dataclasses.fields(owner)}:
        return True
    return hasattr(owner, attribute)


def _returned_class(function) -> type | None:
    try:
        returned = typing.get_type_hints(function).get("return")
    except (NameError, TypeError):
        return None
    return returned if inspect.isclass(returned) else None


def _lmrec_api_problems(source: str) -> list[str]:
    """Names a notebook uses that lmrec no longer has.

    Checks every attribute reached from an imported lmrec module (lmrec.train.summary),
    the keywords and argument counts of calls to lmrec functions, and the attributes of
    what those functions return (result.model_dir, from the return annotation).
    """
    tree = ast.parse(source)
    known = _imported_lmrec_names(tree)
    problems: list[str] = []

    def resolve(node):
        if isinstance(node, ast.Name):
            return known.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = resolve(node.value)
            if owner is None:
                return None
            cls = owner.cls if isinstance(owner, _Instance) else owner
            if not _has(cls, node.attr):
                problems.append(f"{ast.unparse(node)}: {cls!r} has no {node.attr!r}")
                return None
            value = getattr(cls, node.attr, None)
            if isinstance(owner, _Instance):
                # A method of the value: bound, so its signature loses self.
                return functools.partial(value, owner) if inspect.isfunction(value) else None
            return value
        return None

    # Statements in order, so `result = train.train_and_evaluate(...)` types `result`.
    for statement in tree.body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Attribute):
                resolve(node)
            elif isinstance(node, ast.Call):
                function = resolve(node.func)
                splat = any(isinstance(a, ast.Starred) for a in node.args) or any(
                    k.arg is None for k in node.keywords
                )
                if callable(function) and not splat:
                    try:
                        inspect.signature(function).bind(
                            *node.args, **{k.arg: k.value for k in node.keywords}
                        )
                    except TypeError as error:
                        problems.append(f"{ast.unparse(node)[:80]}: {error}")
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
            function = resolve(statement.value.func)
            returned = _returned_class(function) if callable(function) else None
            for target in statement.targets:
                if isinstance(target, ast.Name) and returned is not None:
                    known[target.id] = _Instance(returned)
    return sorted(set(problems))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_only_lmrec_names_that_exist(path):
    nb = nbformat.read(path, as_version=4)
    sources = [_python_source(cell.source) for cell in _code_cells(nb)]
    assert _lmrec_api_problems("\n\n".join(s for s in sources if s is not None)) == []


def test_api_check_catches_drift():
    problems = _lmrec_api_problems(
        "from lmrec import train\n"
        "from lmrec.data import gldv2_download\n"
        "result = train.train_and_evaluate(None, verbose=False)\n"
        "print(result.model_dir, result.no_such_field, result.phase_seconds)\n"
        "downloaded = gldv2_download.download_gldv2(None)\n"
        "print(downloaded.describe(), downloaded.describe(2))\n"
        "train.train_and_evaluate_v2(None)\n"
        "gldv2_download.download_gldv2(None, keep_tar=False)\n"
    )
    assert len(problems) == 4, problems
    assert any("no_such_field" in p for p in problems)
    assert any("train_and_evaluate_v2" in p for p in problems)
    assert any("keep_tar" in p for p in problems)
    assert any("describe(2)" in p for p in problems)


def test_gldv2_notebook_builds_a_valid_experiment():
    """Its parameter and config cells are plain Python: run them and check what they build."""
    nb = nbformat.read(GLDV2, as_version=4)
    cells = {cell.id: cell.source for cell in _code_cells(nb)}
    namespace: dict = {"IN_COLAB": False, "os": os}
    exec(cells["parameters"], namespace)
    exec(cells["config"], namespace)
    experiment = namespace["experiment"]
    assert isinstance(experiment, config_lib.ExperimentConfig)
    assert experiment.prepare.source == "gldv2"
    assert experiment.train.strategy in distribute.STRATEGIES
    assert experiment.model.backbone in backbones.BACKBONES
    assert experiment.model.weights == "imagenet"
    assert experiment.export.export_dir.startswith(namespace["DRIVE_DIR"])
    for strategy in ("auto", "default", "mirrored", "tpu"):
        assert strategy in distribute.STRATEGIES
