"""Dataset configs: versioned JSON, pinned to a model, checkpoint and geometry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from krypton.approximation import Approximation
from krypton.models import (
    DatasetConfig,
    DatasetConfigError,
    DatasetStore,
    fingerprint,
    random_weights_id,
)


def _config(**changes: object) -> DatasetConfig:
    fields: dict[str, object] = {
        "dataset": "retina-oct", "model": "resnet18", "checkpoint": "ab" * 32,
        "patch_size": 16, "stride": 4, "tau": 0.7, "drilldown_ratio": 0.1,
        "coarse_stride": 13, "target_ssim": 0.9, "achieved_ssim": 0.93, "speedup": 4.1,
    }
    fields.update(changes)
    return DatasetConfig(**fields)  # type: ignore[arg-type]


def test_config_round_trips_through_json() -> None:
    config = _config()
    assert DatasetConfig.from_json(config.to_json()) == config


def test_config_json_records_version_and_date() -> None:
    document = json.loads(_config().to_json())
    assert document["version"] == 1
    assert len(document["created"]) == 10


def test_store_saves_and_loads_by_dataset_name(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    path = store.save(_config())
    assert path == tmp_path / "retina-oct.json"
    assert store.load("retina-oct") == _config()
    assert store.names() == ["retina-oct"]


def test_store_refuses_a_config_file_with_an_unknown_field_naming_file_dataset_and_field(
    tmp_path: Path
) -> None:
    store = DatasetStore(tmp_path)
    path = store.save(_config())
    path.write_text(json.dumps(json.loads(path.read_text()) | {"colour": "red"}))
    with pytest.raises(DatasetConfigError) as raised:
        store.load("retina-oct")
    message = str(raised.value)
    assert str(path) in message and "dataset 'retina-oct'" in message and "'colour'" in message


def test_store_without_the_dataset_names_the_known_ones(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.save(_config())
    with pytest.raises(DatasetConfigError, match="retina-oct"):
        store.load("chest-xray")


@pytest.mark.parametrize(("arguments", "message"), [
    pytest.param({"model": "vgg16"}, "model 'resnet18'", id="other-model"),
    pytest.param({"patch_size": 8}, "patch_size 16", id="other-patch"),
    pytest.param({"stride": 2}, "stride 4", id="other-stride"),
])
def test_config_is_refused_for_another_model_or_geometry(
    arguments: dict[str, object], message: str
) -> None:
    asked: dict[str, object] = {"model": "resnet18", **arguments}
    with pytest.raises(DatasetConfigError, match=message):
        _config().check_compatible(**asked)  # type: ignore[arg-type]


def test_config_is_accepted_for_its_own_model_and_geometry() -> None:
    _config().check_compatible("resnet18", patch_size=16, stride=4)


def test_config_from_tuning_records_the_chosen_knobs_and_scores() -> None:
    class Result:
        approximation = Approximation(0.6, 0.5, 16, 0.1)
        target_ssim, holdout_ssim, speedup = 0.9, 0.912345, 7.12345

    config = DatasetConfig.from_tuning(Result(), dataset="d", model="resnet18",
                                       checkpoint="ab" * 32, patch_size=16, stride=4)
    assert (config.tau, config.drilldown_ratio, config.coarse_stride,
            config.drilldown_tolerance) == (0.6, 0.5, 16, 0.1)
    assert (config.achieved_ssim, config.speedup, config.met_target) == (0.9123, 7.123, True)


def test_random_weights_have_a_seed_identity_distinct_from_files(tmp_path: Path) -> None:
    checkpoint = tmp_path / "w.pt"
    checkpoint.write_bytes(b"weights")
    assert random_weights_id(0, 4) != random_weights_id(1, 4)
    assert random_weights_id(0, 4) != random_weights_id(0, 1000)
    assert random_weights_id(0, 4) != fingerprint(checkpoint)


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("{not json", "JSON", id="not-json"),
    pytest.param("[1, 2]", "object", id="not-object"),
    pytest.param(json.dumps({"dataset": "x"}), "missing field 'model'",
                 id="missing-fields"),
])
def test_malformed_config_raises_dataset_config_error(text: str, message: str) -> None:
    with pytest.raises(DatasetConfigError, match=message):
        DatasetConfig.from_json(text)


@pytest.mark.parametrize(("changes", "message"), [
    pytest.param({"version": 2}, "version", id="future-version"),
    pytest.param({"tau": 0.0}, "tau", id="tau-zero"),
    pytest.param({"coarse_stride": None}, "needs both", id="ratio-without-stride"),
    pytest.param({"dataset": "../etc/passwd"}, "dataset: should match pattern",
                 id="path-traversal"),
])
def test_invalid_config_values_raise_dataset_config_error(changes: dict[str, object],
                                                          message: str) -> None:
    with pytest.raises(DatasetConfigError, match=message):
        _config(**changes)


def test_config_refuses_a_bisection_tolerance_without_its_cap() -> None:
    with pytest.raises(DatasetConfigError, match="drilldown_tolerance needs drilldown_ratio"):
        DatasetConfig(dataset="d", model="resnet18", checkpoint="ab" * 32, patch_size=16,
                      stride=4, tau=1.0, drilldown_ratio=None, coarse_stride=None,
                      drilldown_tolerance=0.1, target_ssim=0.9, achieved_ssim=0.95)


def test_config_written_before_bisection_reads_without_a_tolerance() -> None:
    document = json.loads(_config().to_json())
    document.pop("drilldown_tolerance")
    assert DatasetConfig.from_json(json.dumps(document)).drilldown_tolerance is None


def test_config_refuses_bisection_off_the_fine_grid() -> None:
    with pytest.raises(DatasetConfigError, match="multiple of the stride"):
        _config(drilldown_ratio=0.5, coarse_stride=18, drilldown_tolerance=0.1)
