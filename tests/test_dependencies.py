"""pyproject.toml's dependency floors admit no release that lacks an API the code uses."""

from __future__ import annotations

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

# (package, first release with the API, how the code names the API)
APIS = [
    ("lightning", "2.6", "WeightAveraging"),  # lightning.pytorch.callbacks.WeightAveraging
    ("numpy", "2.0", "np.trapezoid"),  # np.trapz's new name
    ("diffusers", "0.26", "diffusers.models.unets"),  # the unets subpackage
]


def _floors() -> dict[str, Version]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        floors[requirement.name] = max(lows, default=Version("0"))
    return floors


@pytest.mark.parametrize(("package", "first", "marker"), APIS)
def test_floor_admits_no_release_without_an_api_the_code_uses(package: str, first: str, marker: str):
    sources = [p for folder in ("mia", "train_targets", "bench") for p in (REPO / folder).rglob("*.py")]
    if not any(marker in p.read_text() for p in sources):
        pytest.skip(f"the code no longer uses {marker}")
    assert _floors()[package] >= Version(first), f"{marker} needs {package} >= {first}"
