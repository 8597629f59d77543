"""``krypton explain`` and ``POST /v1/heatmaps`` give the same heatmap for the same request.

The deployed model here is normalised with its own statistics (not
ImageNet's), so a command line that preprocessed differently from the
service would give another array.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from krypton.cli import app
from krypton.models import DatasetConfig, DatasetStore
from krypton.models.deployment import load_deployment
from tests.service import helpers
from tests.service.conftest import ClientFactory

ROOT = Path(__file__).resolve().parents[2]
OWN_STATISTICS = 'mean = [0.3, 0.35, 0.4]\nstd = [0.15, 0.2, 0.25]\n'


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test registry with the model's own mean/std, and a tuned dataset."""
    folder = tmp_path_factory.mktemp("parity")
    registry = helpers.write_registry(folder, datasets_dir=folder / "datasets")
    text = registry.read_text().replace('description = "fundus classifier for tests"\n',
                                        'description = "fundus classifier for tests"\n'
                                        + OWN_STATISTICS, 1)
    registry.write_text(text)
    deployment = load_deployment(registry)
    config = DatasetConfig(
        dataset=helpers.TUNED_DATASET, model="resnet18",
        checkpoint=deployment.model(helpers.MODEL).weights_id(), patch_size=8, stride=4,
        tau=0.7, drilldown_ratio=0.2, coarse_stride=12, target_ssim=0.9, achieved_ssim=0.95)
    DatasetStore(deployment.datasets_dir).save(config)
    return registry


@pytest.mark.parametrize("request_fields", [
    pytest.param({"patch_size": "8", "stride": "4", "patch_color": "black", "mode": "exact"},
                 id="exact"),
    pytest.param({"dataset": helpers.TUNED_DATASET, "mode": "approximate"}, id="approximate"),
])
def test_explain_gives_the_api_heatmap_for_a_deployed_checkpoint(
        own_registry: Path, make_client: ClientFactory, retina_png: bytes, tmp_path: Path,
        request_fields: dict[str, str]) -> None:
    image = tmp_path / "retina.png"
    image.write_bytes(retina_png)
    options = {"patch_size": "--patch", "stride": "--stride", "patch_color": "--color",
               "mode": "--mode", "dataset": "--dataset"}
    arguments = [word for field, value in request_fields.items()
                 for word in (options[field], value)]
    result = CliRunner().invoke(app, [
        "explain", str(image), "-o", str(tmp_path / "cli.npy"), "--registry", str(own_registry),
        "--model", helpers.MODEL, *arguments])
    assert result.exit_code == 0, result.output

    client = make_client(registry=own_registry, datasets_dir=own_registry.parent / "datasets")
    job = helpers.finished(client, retina_png, model=helpers.MODEL, **request_fields)
    assert job["status"] == "succeeded", job["error"]
    served = np.load(io.BytesIO(client.get(job["links"]["npy"]).content))

    np.testing.assert_array_equal(np.load(tmp_path / "cli.npy"), served)
    assert float(np.ptp(served)) > 1e-3, "a flat map would make the comparison moot"


# What differs between two runs of the same request: who ran it, where and how long it took.
RUN_SPECIFIC = {("id",), ("run", "seconds"), ("run", "device")}


def _leaves(document: object, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    if isinstance(document, dict):
        return {leaf: value for key, item in document.items()
                for leaf, value in _leaves(item, (*path, key)).items()}
    return {path: document}


def test_explain_writes_the_services_heatmap_json_key_by_key(
        own_registry: Path, make_client: ClientFactory, retina_png: bytes,
        tmp_path: Path) -> None:
    image = tmp_path / "retina.png"
    image.write_bytes(retina_png)
    fields = {"dataset": helpers.TUNED_DATASET, "mode": "approximate"}
    result = CliRunner().invoke(app, [
        "explain", str(image), "-o", str(tmp_path / "cli.json"), "--registry",
        str(own_registry), "--model", helpers.MODEL, "--dataset", helpers.TUNED_DATASET,
        "--mode", "approximate"])
    assert result.exit_code == 0, result.output
    client = make_client(registry=own_registry, datasets_dir=own_registry.parent / "datasets")
    job = helpers.finished(client, retina_png, model=helpers.MODEL, **fields)
    served = _leaves(client.get(job["links"]["json"]).json())
    written = _leaves(json.loads((tmp_path / "cli.json").read_text()))

    assert set(written) == set(served)
    assert ("run", "approximation", "tau") in served and ("params", "tuned_for") in served
    for key in set(served) - RUN_SPECIFIC:
        if isinstance(served[key], float):
            assert written[key] == pytest.approx(served[key], rel=1e-6), key
        else:
            assert written[key] == served[key], key


def _readme_command(name: str) -> list[str]:
    """The README's ``krypton NAME`` line for the retina dataset, as arguments."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith(f"krypton {name} ") and "--dataset retina" in line)
    return [str(ROOT / "examples") if word == "examples/" else word
            for word in shlex.split(line)[1:]]


def test_the_readmes_tune_then_serve_workflow_runs_approximate_jobs(
        make_client: ClientFactory, retina_png: bytes, tmp_path: Path) -> None:
    # The README's tune command (on a coarser grid, for time), then the service as the
    # set-up command starts it: no registry, the built-in models.
    configs = tmp_path / "datasets"
    result = CliRunner().invoke(app, [*_readme_command("tune"), "--patch", "32", "--stride",
                                      "32", "--configs", str(configs)])
    assert result.exit_code == 0, result.output
    tuned = json.loads((configs / "retina.json").read_text())

    client = make_client(registry=None, datasets_dir=configs)
    dataset = client.get("/v1/datasets/retina").json()
    assert dataset["stale"] is None and dataset["tuned"]["checkpoint"] == tuned["checkpoint"]
    job = helpers.finished(client, retina_png, mode="approximate", dataset="retina")
    assert job["status"] == "succeeded", job["error"]
    assert (job["run"]["mode"], job["run"]["approximation"]["tau"]) == ("approximate", tuned["tau"])
