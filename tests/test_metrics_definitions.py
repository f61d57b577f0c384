"""metrics.json defines its own fields (leanmed.train.record.DEFINITIONS): every field a run writes is covered by a
definition, and docs/measurements.md repeats the definitions word for word."""
import re
from fnmatch import fnmatchcase

from leanmed.train.record import DEFINITIONS
from workflow_helpers import REPO


def field_paths(block, prefix=""):
    """Dotted paths of the leaves of a metrics.json block (a dict-valued field counts as a leaf where it is empty or
    a record of its own, e.g. provenance.gpu_claim)."""
    for key, value in block.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "gpu_claim":
            yield from field_paths(value, path + ".")
        else:
            yield path


def undefined_fields(metrics):
    """Fields of `metrics` that no DEFINITIONS key covers (a key covers the paths it matches and those below them)."""
    fields = field_paths({key: value for key, value in metrics.items() if key != "definitions"})
    return [
        path for path in fields
        if not any(fnmatchcase(".".join(path.split(".")[:depth]), key)
                   for depth in range(1, path.count(".") + 2) for key in DEFINITIONS)
    ]


def test_field_coverage_is_by_path_prefix_and_wildcard():
    metrics = {"memory": {"train_peak_reserved_bytes": 1, "invented_bytes": 2}, "energy": {"train": {"pue": 1.58}},
               "definitions": {}}
    assert undefined_fields(metrics) == ["memory.invented_bytes"]


def test_docs_repeat_the_definitions_word_for_word():
    text = (REPO / "docs/measurements.md").read_text()
    section = text.split("## Per-run figures", 1)[1].split("\nAlso written per run:", 1)[0]
    entries = re.findall(r"^- `([^`]+)`: (.*)$", section, flags=re.MULTILINE)
    assert [key for key, _ in entries] == list(DEFINITIONS)
    for key, description in entries:
        assert description.startswith(DEFINITIONS[key]), key  # the docs may add history after it
