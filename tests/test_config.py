"""Session configuration: derived values, validation errors that name the field, UI form params."""
from __future__ import annotations

import pytest

from airflow_provider_cryoem.config import (
    ConfigError,
    SessionConfig,
    check_under_roots,
    parse_session_config,
)
from airflow_provider_cryoem.params import session_params


def test_box_sizes_are_derived_from_diameter_and_pixel_size():
    config = SessionConfig(particle_diameter_a=150, pixel_size_a=0.83)
    # ceil(1.2 * 150 / 0.83) = 217 -> rounded up to even 218
    assert config.extraction_box_px == 218
    # 218 * 0.83 / 64 = 2.83 Å < 3.75 Å, so the first candidate is taken
    assert config.downscaled_box_px == 64
    assert config.mask_diameter_a == pytest.approx(165.0)


def test_downscaled_box_grows_until_its_pixel_is_finer_than_3_75_angstrom():
    config = SessionConfig(particle_diameter_a=400, pixel_size_a=1.0)
    assert config.extraction_box_px == 480
    # 480 px over 64, 96 and 128 px gives 7.5, 5.0 and exactly 3.75 Å pixels (not below): 160 px (3.0 Å) is taken.
    assert config.downscaled_box_px == 160
    # A slightly smaller particle (box 478 px) puts 128 px just below the bound (3.73 Å), so it is taken.
    assert SessionConfig(particle_diameter_a=398, pixel_size_a=1.0).downscaled_box_px == 128


def test_user_box_size_overrides_the_derived_one():
    config = SessionConfig(box_size_px=300, downscaled_box_size_px=100)
    assert (config.extraction_box_px, config.downscaled_box_px) == (300, 100)


def test_out_of_range_field_is_named_with_its_bound():
    with pytest.raises(ConfigError) as excinfo:
        parse_session_config({"voltage_kv": 1000})
    message = str(excinfo.value)
    assert "voltage_kv" in message and "400" in message


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match="pixel_size: unknown setting"):
        parse_session_config({"pixel_size": 1.0})


def test_odd_box_size_is_rejected():
    with pytest.raises(ConfigError, match="box_size_px must be even"):
        parse_session_config({"box_size_px": 101})


def test_computed_fields_in_conf_are_ignored_not_rejected():
    """A conf echoed back from a previous run carries computed values; they are recomputed."""
    config = parse_session_config({"particle_diameter_a": 150, "extraction_box_px": 1})
    assert config.extraction_box_px == 180


def test_processing_path_defaults_beside_the_watched_folder(tmp_path):
    config = SessionConfig(watch_dir=str(tmp_path / "raw"))
    assert config.processing_path == str(tmp_path / "processing")


def test_paths_outside_allowed_roots_are_refused(tmp_path):
    allowed = tmp_path / "data"
    allowed.mkdir()
    assert check_under_roots(allowed / "session1", "watch_dir", [allowed]) == allowed / "session1"
    with pytest.raises(ConfigError, match="watch_dir: .* outside the allowed data roots"):
        check_under_roots(allowed / ".." / "elsewhere", "watch_dir", [allowed])


def test_every_input_field_becomes_a_param_with_description_and_section():
    params = session_params()
    assert set(params) == set(SessionConfig.model_fields)
    for name, param in params.items():
        assert param.description, name
        assert param.schema.get("section"), name
    assert params["voltage_kv"].schema["maximum"] == 400
    assert params["frame_count"].schema["type"] == ["integer", "null"]
    assert params["gain_rotation"].schema["enum"] == [0, 1, 2, 3]


def test_param_rejects_a_value_outside_its_bounds():
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(session_params())
    params["voltage_kv"] = 300
    params.validate()
    with pytest.raises(Exception, match="voltage_kv"):
        bad = ParamsDict(session_params())
        bad["voltage_kv"] = 1000
        bad.validate()


def test_recipe_defaults_override_param_defaults():
    params = session_params({"particle_diameter_a": 250})
    assert params["particle_diameter_a"].value == 250


def test_form_labels_show_the_unit_of_each_field():
    from airflow_provider_cryoem.params import form_title

    params = session_params()
    assert params["pixel_size_a"].schema["title"] == "Pixel size (Å)"
    assert params["dose_per_frame_e_a2"].schema["title"] == "Dose per frame (e⁻/Å²)"
    assert params["voltage_kv"].schema["title"] == "Voltage (kV)"
    assert params["idle_timeout_s"].schema["title"] == "Idle timeout (s)"
    assert form_title("super_resolution") == "Super resolution"
    assert form_title("class2d_batch_size") == "Class2D batch size"


def test_no_configured_data_root_allows_no_session_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CRYOEM_DATA_ROOTS", raising=False)
    with pytest.raises(ConfigError, match="watch_dir: no data roots are configured"):
        check_under_roots(tmp_path, "watch_dir")
    monkeypatch.setenv("CRYOEM_DATA_ROOTS", f"/nonexistent-root:{tmp_path}")
    assert check_under_roots(tmp_path / "raw", "watch_dir") == tmp_path / "raw"
