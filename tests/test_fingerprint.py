"""The code fingerprint of a step covers every leanmed module the step runs, found by following its imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leanmed import fingerprint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A small leanmed-like package tree: step.py imports helper (inside a function) and atomic; helper imports
    deep; unrelated.py is imported by nobody."""
    files = {
        "__init__.py": "",
        "atomic.py": "def write(): pass\n",
        "step.py": (
            "from leanmed import atomic\n\ndef run():\n    from leanmed.sub.helper import value\n    return value\n"
        ),
        "sub/__init__.py": "",
        "sub/helper.py": "import leanmed.sub.deep\nvalue = 1\n",
        "sub/deep.py": "import numpy\nCONSTANT = 2\n",
        "unrelated.py": "x = 3\n",
    }
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", tmp_path)
    monkeypatch.setattr(fingerprint, "STEP_MODULES", {"step": ("step.py",)})
    monkeypatch.setattr(fingerprint, "EXCLUDED_FROM_STEP", {})
    return tmp_path


def test_code_files_follow_imports_transitively_but_not_content_neutral_modules(package):
    assert fingerprint.code_files("step") == ("step.py", "sub/__init__.py", "sub/deep.py", "sub/helper.py")


def test_an_edit_two_imports_away_changes_the_fingerprint_and_an_unrelated_one_does_not(package):
    before = fingerprint.code_version("step")
    (package / "unrelated.py").write_text("x = 4\n")
    (package / "atomic.py").write_text("def write(): return None\n")
    assert fingerprint.code_version("step") == before
    (package / "sub/deep.py").write_text("import numpy\nCONSTANT = 3\n")
    assert fingerprint.code_version("step") != before


def test_an_import_added_later_in_the_same_process_is_followed(package):
    # The parsed imports are cached per file version: the same process sees an edit (Snakemake parses once, a
    # long-lived caller may not).
    assert "unrelated.py" not in fingerprint.code_files("step")
    (package / "sub/deep.py").write_text("import numpy\nfrom leanmed import unrelated\nCONSTANT = 2\n")
    assert "unrelated.py" in fingerprint.code_files("step")


def test_imports_are_found_in_every_kind_of_nested_statement(package):
    (package / "step.py").write_text(
        "class Runner:\n    import leanmed.sub.helper\n"
        "try:\n    pass\nexcept ImportError:\n    import leanmed.unrelated\nelse:\n    pass\n"
        "finally:\n    from leanmed import atomic\n"
        "match 1:\n    case 1:\n        with open(__file__):\n            for _ in ():\n                pass\n"
        "            else:\n                import leanmed.sub.deep\n"
    )
    assert fingerprint.code_files("step") == (
        "step.py", "sub/__init__.py", "sub/deep.py", "sub/helper.py", "unrelated.py")


def test_unknown_group_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown code group 'nope'.*training"):
        fingerprint.code_version("nope")


def test_registry_stays_out_of_training_and_lidc_from_ct_covers_the_pickle_format():
    training = fingerprint.code_files("training")
    assert "train/registry.py" not in training
    assert {"train/loop.py", "train/job.py", "data/images.py", "metrics.py"} <= set(training)
    # The CT builder writes the pickle format that data/lidc.py defines: editing it must redo the pickle.
    assert "data/lidc.py" in fingerprint.code_files("lidc_from_ct")
    # The cohort's report uses the Markdown table helper only, not the split's code.
    assert "data/splits.py" not in fingerprint.code_files("rsna_cohort")


@pytest.mark.parametrize("group", sorted(fingerprint.STEP_MODULES))
def test_every_module_a_step_loads_at_run_time_is_in_its_code(group):
    """Import the step's modules in a fresh interpreter: every leanmed file then loaded is in the step's code or
    deliberately left out."""
    modules = [
        "leanmed." + path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for path in fingerprint.STEP_MODULES[group]
    ]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps([m.__file__ for n, m in sys.modules.items()"
        " if n.startswith('leanmed') and getattr(m, '__file__', None)]))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                       text=True).stdout)
    package_dir = str(fingerprint.PACKAGE_DIR) + "/"
    relative = {path.removeprefix(package_dir) for path in loaded}
    allowed = set(fingerprint.code_files(group)) | fingerprint.CONTENT_NEUTRAL_MODULES
    allowed |= fingerprint.EXCLUDED_FROM_STEP.get(group, frozenset()) | {"__init__.py"}
    assert relative - allowed == set()


def test_a_workflow_scripts_code_is_every_leanmed_module_it_imports_transitively(package, tmp_path_factory):
    script = tmp_path_factory.mktemp("scripts") / "step_rule.py"
    script.write_text("import sys\n\nfrom leanmed.step import run\n\nrun(snakemake.output[0])\n")
    assert fingerprint.script_code_files(script) == ("step.py", "sub/__init__.py", "sub/deep.py", "sub/helper.py")
    before = fingerprint.script_code_version(script)
    (package / "unrelated.py").write_text("x = 4\n")
    assert fingerprint.script_code_version(script) == before
    (package / "sub/deep.py").write_text("import numpy\nCONSTANT = 3\n")
    assert fingerprint.script_code_version(script) != before


RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk"))
RULE_BLOCK = re.compile(r"^ *rule (\w+):\n(.*?)(?=^ *rule \w+:|\Z)", re.S | re.M)
# Rules whose script imports leanmed yet carry no code fingerprint, and why.
WITHOUT_CODE_FINGERPRINT = {
    # Its files are the hub's bytes, checked against their sha256 whatever code fetched them; a refetch after every
    # edit of the fetching code would download hundreds of megabytes for the same bytes.
    "fetch_weights",
}


def code_covered_by(block: str, constants: dict[str, str]) -> set[str]:
    """The package files whose edits change one of the code fingerprints a rule block passes as params."""
    covered = set()
    for script in re.findall(r'script_code\("(\w+)"\)', block):
        covered |= set(fingerprint.script_code_files(REPO / f"workflow/scripts/{script}.py"))
    groups = re.findall(r'code_version\("(\w+)"\)', block)
    groups += [constants[name] for name in re.findall(r"\b([A-Z_]+_CODE_VERSION)\b", block)]
    if "rerun_triggers" in block:
        groups.append(constants["TRAINING_CODE_VERSION"])
    for group in groups:
        covered |= set(fingerprint.code_files(group)) | fingerprint.EXCLUDED_FROM_STEP.get(group, frozenset())
    return covered


def test_every_rule_that_runs_package_code_reruns_when_that_code_changes():
    """Snakemake reruns a rule whose script changed, not one whose imported package code changed: each rule's params
    must carry a code fingerprint covering every leanmed module its script imports (or it is listed, with why)."""
    text = "\n".join(path.read_text() for path in RULE_FILES)
    constants = dict(re.findall(r'^([A-Z_]+_CODE_VERSION) = code_version\("(\w+)"\)', text, re.M))
    blocks = dict(RULE_BLOCK.findall(text))
    assert {"rsna_images", "dicom_to_png", "train", "paper_table", "cpu_deployment_model"} <= set(blocks)
    checked = []
    for rule, block in blocks.items():
        script = re.search(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"', block)
        if script is None or rule in WITHOUT_CODE_FINGERPRINT:
            continue
        imports = set(fingerprint.script_code_files(REPO / f"workflow/scripts/{script.group(1)}.py"))
        if not imports:
            continue
        for named in re.findall(r'script_code\("(\w+)"\)', block):
            assert named == script.group(1), f"rule {rule} runs {script.group(1)}.py, fingerprints {named}.py"
        missing = imports - code_covered_by(block, constants)
        assert not missing, f"rule {rule}: an edit of {sorted(missing)} would not rerun it"
        checked.append(rule)
    assert len(checked) >= 17, checked
