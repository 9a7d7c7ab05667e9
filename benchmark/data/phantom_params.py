"""The phantom's declared generative model: its version and parameters (quoted in
datasets/lidc/CARD.md). Read by the renderer (``phantom``) and its anatomy (``phantom_anatomy``)."""
from __future__ import annotations

from benchmark.data.true_shape import SUPERSAMPLE_MM

#: the phantom's generative model version: enters the cache's content, folder name and every
#: run's tags (``data.phantom_version``), so results on different phantoms never mix.
#: 1: vote-fraction nodule, no known truth; 2: true shape, supersampled partial volume,
#: vessel trees, airways, fissures, CT-like noise spectrum, margin blur.
PHANTOM_VERSION = "2"

#: Parameters of the generative model (quoted in datasets/lidc/CARD.md).
PARAMS = {
    "parenchyma_hu": (-880.0, -820.0),
    "gradient_hu": (0.0, 40.0),
    "texture_sigma_mm": 1.5,
    "texture_std_hu": (15.0, 35.0),
    "vessel_trees": "2 + Poisson(1.5)",
    "vessel_root_radius_mm": "1 + Gamma(2, 0.5)",
    "vessel_min_radius_mm": 0.3,
    "vessel_max_depth": 5,
    "murray_exponent": (2.9, 0.5),          # mean, std (clipped 2.2-3.6)
    "bifurcation_angle_deg": (28.0, 15.0),  # mean, std (clipped 10-70)
    "vessel_hu": (10.0, 90.0),
    "p_vessel_touch": 0.65,
    "p_pleura_touch": 0.35,
    "p_pleura_far": 0.15,
    "wall_hu": (20.0, 60.0),
    "rib_hu": (400.0, 800.0),
    "p_airway": 0.5,
    "airway_outer_radius_mm": (1.5, 4.0),
    "airway_lumen_ratio": (0.66, 0.06),     # inner/outer diameter, mean, std (clipped 0.51-0.86)
    "bronchoarterial_ratio": (0.79, 0.16),  # clipped 0.5-1.1
    "p_fissure": 0.3,
    "fissure_thickness_mm": (0.3, 0.8),
    "fissure_hu": (-50.0, 50.0),
    "p_fissure_incomplete": 0.45,
    "ground_glass_hu": (-700.0, -450.0),
    "solid_hu": (-50.0, 60.0),
    "part_solid_core_hu": (-60.0, 40.0),
    "calcified_hu": (300.0, 900.0),
    "heterogeneity_std_hu": (10.0, 30.0),
    "supersample_mm": SUPERSAMPLE_MM,
    "margin_blur_sigma_mm": (1.0, 0.7, 0.4, 0.2, 0.0),   # LIDC margin rating 1..5
    "psf_fwhm_mm": (0.8, 1.2),
    "noise_std_hu": (18.0, 40.0),
    "nps_peak_per_mm": (0.20, 0.30),
}
