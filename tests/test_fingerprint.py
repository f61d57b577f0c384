"""The code fingerprint of a step covers every leanmed module the step runs, found by following its imports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leanmed import fingerprint

REPO = Path(__file__).resolve().parents[1]


def printed_json(python: str, script: str, *options: str):
    """What ``script`` prints as JSON, run by ``python`` in a fresh process."""
    return json.loads(subprocess.run([python, *options, "-c", script], check=True, capture_output=True,
                                     text=True).stdout)


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


def test_comments_docstrings_and_layout_leave_a_fingerprint_as_it_was_and_any_code_edit_changes_it(package):
    """A docstring or comment edit (a `git pull` of a typo fix) must not retrain a study: the fingerprint covers the
    tokens that run, not the file's bytes."""
    deep = package / "sub/deep.py"
    deep.write_text(
        '"""Deep."""\nimport numpy\n\n\ndef scale(x, y):\n    """Scaled."""\n    return numpy.multiply(x, y)\n'
    )
    before = fingerprint.code_version("step")
    unchanged = (
        # another docstring, comments, blank lines, spacing, indentation width, wrapping, a docstring removed
        '"""Deep, reworded\nover two lines."""\n# a comment\nimport numpy\ndef scale(x,y):  # why\n'
        '  return numpy.multiply(\n      x,\n      y)\n',
        'import numpy\n\n\ndef scale(x, y):\n    "Scaled" " again";\n    return \\\n        numpy.multiply(x, y)\n',
    )
    for text in unchanged:
        deep.write_text(text)
        assert fingerprint.code_version("step") == before, text
    changed = (
        'import numpy\n\n\ndef scale(x, y):\n    return numpy.multiply(y, x)\n',  # arguments swapped
        'import numpy\n\n\ndef scale(x, y):\n    return numpy.multiply(x, y)\nNOTE = "Scaled."\n',  # a string
        'import numpy\n\n\ndef scale(x, y):\n    pass\nresult = numpy.multiply(1, 2)\n',  # a block ends earlier
        'import numpy\n\n\ndef scale(x, y):\n    return numpy.multiply(x, y, out=f"{x!r:>{y}}")\n',  # an f-string
    )
    seen = {before}
    for text in changed:
        deep.write_text(text)
        seen.add(fingerprint.code_version("step"))
    assert len(seen) == 1 + len(changed)


# Code whose tokens changed between Python versions: 3.12 splits f-strings into tokens of their own.
F_STRINGS = (
    'x, w = 1, 5\na = f"{x}"\nb = f"{{literal}} {x!r:>{w}} {\'nested\' + f\'{x}\'}"\n'
    'c = f"""two\n{x\n + 1} lines {{ }}"""\nd = rf"\\d{x}"\ne = f"{x=}"\ng = "plain" "concatenated" f"{x}" \'q\'\n'
    'h = f"\u00e9{x}\u00fc"\n'
)


def _supported_pythons() -> list[str]:
    """Interpreters of the Python versions CI tests (pyenv's, else on PATH), the running one excluded."""
    found = []
    pyenv_root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("pyenv") else ""
    for version in ("3.11", "3.12", "3.13"):
        if sys.version_info[:2] == tuple(int(part) for part in version.split(".")):
            continue
        candidates = sorted(Path(pyenv_root).glob(f"versions/{version}*/bin/python{version}")) if pyenv_root else []
        candidate = str(candidates[-1]) if candidates else shutil.which(f"python{version}")
        if candidate:
            found.append(candidate)
    return found


def test_code_text_is_the_same_on_every_python_the_project_supports(tmp_path):
    """Snakemake computes the fingerprints with the Python it runs on: a study planned on 3.11 and rerun on 3.13 must
    find the same fingerprints, else every step would rerun. Checked on every file of the package and the scripts."""
    pythons = _supported_pythons()
    if not pythons:
        pytest.skip("no other Python among 3.11, 3.12, 3.13 on this machine")
    (tmp_path / "f_strings.py").write_text(F_STRINGS, encoding="utf-8")
    files = sorted(map(str, [*(REPO / "src/leanmed").rglob("*.py"), *(REPO / "workflow/scripts").glob("*.py"),
                              tmp_path / "f_strings.py"]))
    script = (
        "import hashlib, json, sys\n"
        f"sys.path.insert(0, {str(REPO / 'src')!r})\n"
        "from leanmed.fingerprint import code_text\n"
        f"files = {files!r}\n"
        "print(json.dumps({f: hashlib.sha256(code_text(open(f, encoding='utf-8').read()).encode()).hexdigest()"
        " for f in files}))\n"
    )
    here = printed_json(sys.executable, script)
    assert len(here) == len(files) > 50
    for python in pythons:
        there = printed_json(python, script, "-I")
        assert {f for f in files if there[f] != here[f]} == set(), python


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
    # How a run is recorded is a step of its own (a finished run re-records without training again), and editing one
    # setting's registry entry must not re-record every run.
    recording = fingerprint.code_files("training_record")
    assert "train/record.py" not in training and "train/record.py" in recording
    assert "train/registry.py" not in recording
    assert set(recording) - {"train/record.py"} <= set(training)  # its imports: an edit of them retrains
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
    loaded = printed_json(sys.executable, script)
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
