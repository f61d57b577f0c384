"""The install files agree: what pyproject.toml pins, envs/leanmed.yaml pins the same way."""
import re
import tomllib

import yaml

from workflow_helpers import REPO


def pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(requirement.split("==") for requirement in project["dependencies"])


def conda_pins():
    environment = yaml.safe_load((REPO / "envs/leanmed.yaml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    return dict(requirement.split("==") for requirement in pip_section if "==" in requirement)


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert all("==" in requirement for requirement in project["dependencies"])
    assert pyproject_pins()["torch"] == "2.14.1"
    assert pyproject_pins()["torchvision"] == "0.29.1"


def test_conda_environment_pins_the_same_versions():
    # The jobs' environment needs everything but the workflow engine, which runs outside it.
    engine = {"snakemake", "snakemake-executor-plugin-slurm"}
    expected = {name: version for name, version in pyproject_pins().items() if name not in engine}
    assert conda_pins() == expected


def test_readme_quick_start_is_the_two_make_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make (\w+)", quick_start, flags=re.MULTILINE)
    assert commands == ["demo", "test"]
    assert "make test" in (REPO / ".ci/run").read_text()


def test_measurement_docs_define_every_metric():
    from leanmed.train.record import DEFINITIONS

    documentation = (REPO / "docs/measurements.md").read_text()
    missing = [key for key in DEFINITIONS if f"`{key}`" not in documentation]
    assert not missing, f"docs/measurements.md does not define {missing}"


def test_settings_schema_lists_exactly_the_registry():
    from leanmed.train.registry import SETTINGS

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["$defs"]["setting"]["enum"] == list(SETTINGS)
