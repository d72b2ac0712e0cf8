"""Built-in CTF estimation in the spirit of CTFFIND4 (Rohou & Grigorieff 2015), numpy/scipy only.

Steps: averaged amplitude spectrum of overlapping tiles → background removal → exhaustive 1D defocus
search on the rotational average → 2D refinement of defocus U/V, astigmatism angle (and phase shift)
→ fit resolution from the equiphase average → CTFFIND's outputs: the diagnostic spectrum (MRC, left half
spectrum, right half fit), `<diagnostic>.txt` and `<diagnostic>_avrot.txt`, and a PNG a person can judge
the fit from (spectrum halves and the 1D fit with its local CC).
Angles follow docs/conventions.md: U ≥ V, angle of U counter-clockwise from +x in [0, 180).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.ndimage import gaussian_filter

from ..io import ImageFileError, read_mrc, write_mrc
from ..io.ctffind_text import header_lines, write_avrot, write_output_txt
from .ctf_fit import (
    CtfOptics,
    CtfParameters,
    FitProfile,
    RefinementLimits,
    SpectrumBand,
    fit_profile,
    normalised_cc,
    refine_2d,
    search_defocus_1d,
    thon_ring_period_px,
)
from .ctf_spectrum import (
    average_amplitude_spectrum,
    azimuthal_smoothing,
    background_box_px,
    centred_frequency_grid,
    flatten_spectrum,
    flatten_with_model,
    ice_ring_density,
    radial_profile,
    ring_index,
)
from .plots import ctf_profile_plot
from .thumbnails import ctf_spectrum_panel, side_by_side

# Smallest tile that still resolves Thon rings usefully; images below this are refused.
MIN_BOX_PX = 128
# Fitting stops short of Nyquist: the outermost rings are attenuated by the tile taper and interpolation.
_NYQUIST_FRACTION = 0.95
_MAX_ASTIGMATISM_A = 3000.0
_PHASE_SHIFT_STEP_DEG = 10.0
_PICTURE_SMOOTHING_PX = 1.0
_PICTURE_RING_SMOOTHING_DEG = 5.0
# The picture shows frequencies up to this factor beyond the fitted band (or the search limit, if finer).
_PICTURE_MARGIN = 1.25
_BACKGROUND_ITERATIONS = 2
# The refinement ignores pixels before the first Thon-ring maximum (χ < π/2): there the ring is as broad
# as the background's own variation, and fitting that slope biased low defoci upwards by ~1 %.
_FIRST_PHASE_RAD = 0.5 * np.pi


class CtfInputs(BaseModel):
    """One micrograph and the CTFFIND-style search settings (defaults as cryoem-services passes them)."""

    model_config = ConfigDict(extra="forbid")

    micrograph_path: str = Field(min_length=1, description="Motion-corrected micrograph (MRC).")
    diagnostic_path: str | None = Field(None, description="Diagnostic spectrum/fit MRC to write; default "
                                                          "<micrograph without suffix>.ctf beside it.")
    pixel_size_a: float = Field(gt=0, le=20, description="Pixel size of the micrograph (Å).")
    voltage_kv: float = Field(300.0, ge=60, le=400)
    cs_mm: float = Field(2.7, ge=0, le=10)
    amplitude_contrast: float = Field(0.1, ge=0, le=0.5)
    box_size_px: int = Field(512, ge=MIN_BOX_PX, le=4096, description="Tile (spectrum) size; even. Shrunk to "
                                                                      "fit a smaller image.")
    min_resolution_a: float = Field(30.0, gt=0, description="Low-resolution limit of the fit (Å).")
    max_resolution_a: float = Field(5.0, gt=0, description="High-resolution limit of the fit (Å); raised to "
                                                           "just below Nyquist if finer.")
    min_defocus_a: float = Field(5000.0, gt=0)
    max_defocus_a: float = Field(50000.0, gt=0)
    defocus_step_a: float = Field(100.0, gt=0, description="Step of the exhaustive 1D defocus search (Å).")
    astigmatism_restraint_a: float | None = Field(None, gt=0, description="Expected astigmatism (Å): larger "
                                                                          "values are penalised (CTFFIND "
                                                                          "'restrain astigmatism').")
    find_phase_shift: bool = Field(False, description="Also fit an additional phase shift (phase plate).")
    fft_workers: int = Field(1, ge=1, le=256, description="Threads for scipy.fft.")

    @model_validator(mode="after")
    def _ranges(self) -> "CtfInputs":
        if self.box_size_px % 2:
            raise ValueError(f"box_size_px must be even, got {self.box_size_px}")
        if self.min_resolution_a <= self.max_resolution_a:
            raise ValueError(f"min_resolution_a ({self.min_resolution_a}) must be coarser (larger) than "
                             f"max_resolution_a ({self.max_resolution_a})")
        if self.min_defocus_a >= self.max_defocus_a:
            raise ValueError(f"min_defocus_a ({self.min_defocus_a}) must be below max_defocus_a "
                             f"({self.max_defocus_a})")
        return self


class CtfResult(BaseModel):
    """Fitted CTF of one micrograph, with the keys cryoem-services stores (defocus, angle, score, resolution)."""

    micrograph_path: str
    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    astigmatism_a: float
    phase_shift_deg: float
    fit_resolution_a: float
    cc: float = Field(description="Normalised CC between flattened spectrum and CTF² in the fitted band.")
    ice_ring_density: float | None = Field(description="Spectrum excess in the 3.9–3.6 Å ice band (None if "
                                                       "beyond Nyquist).")
    box_size_px: int = Field(description="Tile size actually used.")
    n_tiles: int
    diagnostic_image: str = Field(description="MRC: left half flattened spectrum, right half fitted CTF² within "
                                              "the fitted band (CTFFIND's diagnostic image).")
    diagnostic_thumbnail: str = Field(description="PNG for people and the dashboard: the spectrum halves and the 1D "
                                                  "fit with its local CC.")
    results_text: str = Field(description="CTFFIND 4.1-style `<diagnostic>.txt` with the results line.")
    rotational_average_text: str = Field(description="CTFFIND 4.1-style `<diagnostic>_avrot.txt`.")


def load_micrograph(path: str | Path) -> np.ndarray:
    """Read a 2D micrograph as float32, refusing stacks, NaN/inf and constant images with the file named."""
    data = read_mrc(path, mmap=False)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ImageFileError(path, f"expected a 2D micrograph, got an array of shape {data.shape}")
    image = np.asarray(data, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ImageFileError(path, "micrograph contains NaN or infinite values")
    if float(image.max()) == float(image.min()):
        raise ImageFileError(path, "micrograph is constant (no signal to estimate a CTF from)")
    return image


def usable_box_px(image_shape: tuple[int, int], box_px: int, path: str | Path) -> int:
    """The requested tile size, or the largest even size that fits a smaller image (at least MIN_BOX_PX)."""
    fitting = min(box_px, min(image_shape) - min(image_shape) % 2)
    if fitting < MIN_BOX_PX:
        raise ImageFileError(path, f"micrograph of {image_shape[1]}×{image_shape[0]} px is too small for CTF "
                                   f"estimation (needs at least {MIN_BOX_PX}×{MIN_BOX_PX} px)")
    return fitting


def default_diagnostic_path(micrograph_path: str | Path) -> Path:
    return Path(micrograph_path).with_suffix(".ctf")


def run_ctf_estimation(inputs: CtfInputs) -> CtfResult:
    """Estimate defocus U/V, astigmatism angle (and phase shift) of one micrograph; write the diagnostic."""
    image = load_micrograph(inputs.micrograph_path)
    box_px = usable_box_px(image.shape, inputs.box_size_px, inputs.micrograph_path)
    pixel_a = inputs.pixel_size_a
    optics = CtfOptics(inputs.voltage_kv, inputs.cs_mm, inputs.amplitude_contrast)
    min_frequency = 1.0 / inputs.min_resolution_a
    max_frequency = min(1.0 / inputs.max_resolution_a, _NYQUIST_FRACTION / (2.0 * pixel_a))
    if max_frequency <= min_frequency:
        raise ValueError(f"min_resolution_a ({inputs.min_resolution_a} Å) leaves no band below Nyquist "
                         f"({2 * pixel_a:.2f} Å) for {inputs.micrograph_path}")

    spectrum, n_tiles = average_amplitude_spectrum(image, box_px, inputs.fft_workers)
    freq, azimuth = centred_frequency_grid(box_px, pixel_a)
    flat = flatten_spectrum(spectrum, freq, min_frequency,
                            background_box_px(box_px, pixel_a, inputs.min_resolution_a))

    params = _search_rotational_average(inputs, flat, optics, min_frequency, max_frequency, box_px)
    params, flat, band = _refine(inputs, spectrum, flat, params, optics, min_frequency, max_frequency, box_px)
    cc = float(normalised_cc(band.values, params.ctf_squared(optics, band.freq, band.azimuth_rad)))
    profile = fit_profile(flat, freq, azimuth, params, optics, box_px, pixel_a, min_frequency)

    diagnostic = Path(inputs.diagnostic_path or default_diagnostic_path(inputs.micrograph_path))
    fit = params.ctf_squared(optics, freq, azimuth).astype(np.float32)
    mrc_path = _write_diagnostic_mrc(diagnostic, flat, fit, freq, profile.fit_band, pixel_a)
    text_path, avrot_path, rows = _write_ctffind_text(inputs, box_px, diagnostic, params, cc, profile)
    caption = _caption(params, cc, profile.fit_resolution_a)
    png_path = diagnostic_picture(diagnostic, flat, fit, pixel_a, rows, profile.fit_band,
                                  max(profile.fit_band[1], max_frequency), caption)
    return CtfResult(
        micrograph_path=str(inputs.micrograph_path), defocus_u_a=params.defocus_u_a, defocus_v_a=params.defocus_v_a,
        astigmatism_angle_deg=params.astigmatism_angle_deg, astigmatism_a=params.astigmatism_a,
        phase_shift_deg=params.phase_shift_deg, fit_resolution_a=profile.fit_resolution_a, cc=cc,
        ice_ring_density=ice_ring_density(spectrum, box_px, pixel_a), box_size_px=box_px, n_tiles=n_tiles,
        diagnostic_image=str(mrc_path), diagnostic_thumbnail=str(png_path), results_text=str(text_path),
        rotational_average_text=str(avrot_path))


def _search_rotational_average(inputs: CtfInputs, flat: np.ndarray, optics: CtfOptics, min_frequency: float,
                               max_frequency: float, box_px: int) -> CtfParameters:
    """Stigmatic first guess: exhaustive defocus (× phase shift) search on the rotational average."""
    profile_freq, profile = radial_profile(flat, box_px, inputs.pixel_size_a)
    in_band = (profile_freq >= min_frequency) & (profile_freq <= max_frequency)
    defoci = np.arange(inputs.min_defocus_a, inputs.max_defocus_a + 0.5 * inputs.defocus_step_a,
                       inputs.defocus_step_a)
    phases = (np.deg2rad(np.arange(0.0, 180.0, _PHASE_SHIFT_STEP_DEG)) if inputs.find_phase_shift
              else np.zeros(1))
    defocus, phase, _ = search_defocus_1d(profile_freq[in_band], profile[in_band], optics, defoci, phases)
    return CtfParameters(defocus, defocus, 0.0, float(np.rad2deg(phase)))


def _refine(inputs: CtfInputs, spectrum: np.ndarray, flat: np.ndarray, params: CtfParameters, optics: CtfOptics,
            min_frequency: float, max_frequency: float, box_px: int
            ) -> tuple[CtfParameters, np.ndarray, SpectrumBand]:
    """2D fit on the box-flattened spectrum, then refits on spectra flattened with a model-aware background.

    Returns the parameters, the last flattened spectrum and the band of pixels they were fitted on.
    """
    pixel_a = inputs.pixel_size_a
    max_astigmatism = _MAX_ASTIGMATISM_A
    if inputs.astigmatism_restraint_a is not None:
        max_astigmatism = max(max_astigmatism, 3.0 * inputs.astigmatism_restraint_a)
    limits = RefinementLimits(inputs.min_defocus_a, inputs.max_defocus_a, max_astigmatism,
                              inputs.astigmatism_restraint_a)
    freq, azimuth = centred_frequency_grid(box_px, pixel_a)
    band = SpectrumBand.select(flat, freq, azimuth, min_frequency, max_frequency)
    params, _ = refine_2d(band, optics, params, inputs.find_phase_shift, limits, grid_search=True)
    # The box-filter background is biased where rings are broad; re-estimate it knowing the fit, and refit.
    rings = ring_index(freq, box_px, pixel_a)
    first_ring = int(np.ceil(min_frequency * box_px * pixel_a))
    ring_freq = np.arange(box_px // 2 + 1) / (box_px * pixel_a)
    for _ in range(_BACKGROUND_ITERATIONS):
        period = thon_ring_period_px(params.mean_defocus_a, optics, ring_freq)
        flat = flatten_with_model(spectrum, params.ctf_squared(optics, freq, azimuth), rings, period, first_ring)
        band = SpectrumBand.select(flat, freq, azimuth, min_frequency, max_frequency,
                                   also=params.phase(optics, freq, azimuth) >= _FIRST_PHASE_RAD)
        params, _ = refine_2d(band, optics, params, inputs.find_phase_shift, limits, grid_search=False)
    return params, flat, band


def _fit_in_band(flat: np.ndarray, fit: np.ndarray, freq: np.ndarray, fit_band: tuple[float, float]) -> np.ndarray:
    """The fit on the flattened spectrum's scale inside the fitted band; 0 elsewhere."""
    inside = (freq >= fit_band[0]) & (freq <= fit_band[1])
    scaled = np.zeros_like(flat)
    if inside.any():
        scaled[inside] = ((fit[inside] - fit[inside].mean()) / max(float(fit[inside].std()), 1e-12)
                          * float(flat[inside].std()))
    return scaled


def _write_diagnostic_mrc(path: Path, flat: np.ndarray, fit: np.ndarray, freq: np.ndarray,
                          fit_band: tuple[float, float], pixel_size_a: float) -> Path:
    """CTFFIND's diagnostic image: one centred spectrum, flattened data on the left; on the right the fit
    (same scale) where the rings were fitted and followed, the data beyond."""
    inside = (freq >= fit_band[0]) & (freq <= fit_band[1])
    half = flat.shape[1] // 2
    combined = flat.copy()
    right = np.zeros(flat.shape, dtype=bool)
    right[:, half:] = True
    combined[right & inside] = _fit_in_band(flat, fit, freq, fit_band)[right & inside]
    return write_mrc(path, combined.astype(np.float32), pixel_size_a)


def _write_ctffind_text(inputs: CtfInputs, box_px: int, diagnostic: Path, params: CtfParameters, cc: float,
                        profile: FitProfile) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """`<diagnostic>.txt` and `<diagnostic>_avrot.txt` in CTFFIND 4.1's layout, so programs that read
    CTFFIND's results (Relion, CCP-EM doppio, cryoem-services' parsers) read ours."""
    header = header_lines("the built-in CTF engine of airflow-provider-cryoem (CTFFIND 4.1 layout)",
                          inputs.micrograph_path, inputs.pixel_size_a, inputs.voltage_kv, inputs.cs_mm,
                          inputs.amplitude_contrast, box_px, inputs.min_resolution_a,
                          inputs.max_resolution_a, inputs.min_defocus_a, inputs.max_defocus_a)
    base = diagnostic.with_suffix("")
    text = write_output_txt(f"{base}.txt", header, params.defocus_u_a, params.defocus_v_a,
                            params.astigmatism_angle_deg, float(np.deg2rad(params.phase_shift_deg)), cc,
                            profile.fit_resolution_a)
    rows = {"spatial_frequency_per_a": profile.freq,
            "rotational_average_no_astigmatism": profile.renormalised(profile.rotational_average),
            "rotational_average": profile.renormalised(profile.equiphase_average),
            "ctf_fit": profile.ctf_squared, "fit_cross_correlation": profile.local_cc,
            "noise_2sigma": profile.noise_cc_2sigma}
    return text, write_avrot(f"{base}_avrot.txt", header, rows), rows


def _caption(params: CtfParameters, cc: float, fit_resolution_a: float) -> str:
    return (f"defocus U {params.defocus_u_a / 1e4:.3f} µm, V {params.defocus_v_a / 1e4:.3f} µm, "
            f"angle {params.astigmatism_angle_deg:.0f}°, phase shift {params.phase_shift_deg:.0f}°, "
            f"CC {cc:.3f}, fit to {fit_resolution_a:.1f} Å")


def diagnostic_picture(diagnostic: Path, spectrum: np.ndarray, fit: np.ndarray | None, pixel_size_a: float,
                       avrot: Mapping[str, Sequence[float]], fit_band: tuple[float, float], fitted_to_freq: float,
                       caption: str) -> Path:
    """`<diagnostic stem>_ctf.png`: the spectrum halves and the 1D fit, up to a little past `fitted_to_freq`.

    `spectrum` is the centred background-subtracted spectrum, `fit` CTF² on its grid (None: the right half
    of `spectrum` already holds the fit, as in CTFFIND's diagnostic image), `avrot` the six rows of a
    CTFFIND `_avrot.txt`, `fit_band` the (low, high) frequencies (1/Å) of the fit.
    """
    freq, _ = centred_frequency_grid(spectrum.shape[0], pixel_size_a)
    display_max = min(0.5 / pixel_size_a, _PICTURE_MARGIN * fitted_to_freq)
    # Per-pixel speckle hides the rings from the eye (not from the fit): smooth a little, and along the rings.
    shown = azimuthal_smoothing(gaussian_filter(spectrum, _PICTURE_SMOOTHING_PX), _PICTURE_RING_SMOOTHING_DEG)
    panel = ctf_spectrum_panel(shown, fit, freq, fit_band, display_max)
    rows = {name: np.asarray(values, dtype=np.float64) for name, values in avrot.items()}
    plot = ctf_profile_plot(rows["spatial_frequency_per_a"], rows["rotational_average"], rows["ctf_fit"],
                            rows["fit_cross_correlation"], rows["noise_2sigma"], fit_band, display_max,
                            size_px=(640, panel.height))
    return side_by_side(diagnostic.with_name(f"{diagnostic.stem}_ctf.png"), [panel, plot], caption)


def ctffind_diagnostic_picture(result: Mapping[str, Any], min_resolution_a: float) -> Path:
    """The same picture for CTFFIND's outputs: its diagnostic image (data left, fit right) and `_avrot.txt`
    rows (`result["rotational_average"]`, as tools.ctffind.parse_result gives them)."""
    diagnostic = Path(result["diagnostic_image"])
    image = np.asarray(read_mrc(diagnostic, mmap=False), dtype=np.float32)
    image = image[0] if image.ndim == 3 else image
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ImageFileError(diagnostic, f"expected a square CTFFIND diagnostic spectrum, got shape {image.shape}")
    avrot = result["rotational_average"]
    freq = avrot["spatial_frequency_per_a"]
    # CTFFIND may resample before fitting: its bins, 1/(box · fitting pixel), give the spectrum's pixel size.
    pixel_size_a = 1.0 / (image.shape[0] * (freq[1] - freq[0]))
    high = 1.0 / result["fit_resolution_a"] if np.isfinite(result["fit_resolution_a"]) else 1.0 / min_resolution_a
    caption = (f"CTFFIND: defocus U {result['defocus_u_a'] / 1e4:.3f} µm, V {result['defocus_v_a'] / 1e4:.3f} µm, "
               f"angle {result['astigmatism_angle_deg']:.0f}°, CC {result['cc']:.3f}, "
               f"fit to {result['fit_resolution_a']:.1f} Å")
    return diagnostic_picture(diagnostic, image, None, pixel_size_a, avrot, (1.0 / min_resolution_a, high), high,
                              caption)
