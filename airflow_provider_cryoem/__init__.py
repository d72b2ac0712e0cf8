"""Apache Airflow provider for live cryo-EM processing (single particle analysis and tomography)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("airflow-provider-cryoem")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"


# One operator per processing step (operators/movie_steps.py, operators/batch_steps.py), named here so that
# `airflow providers get airflow-provider-cryoem` lists them without importing Airflow's task SDK.
STEP_OPERATORS = ("MotionCorrectionOperator", "CtfEstimationOperator", "ParticlePickingOperator",
                  "IceThicknessOperator", "ParticleExtractionOperator", "ParticleRebatchOperator",
                  "Class2DOperator", "ClassSelectionOperator", "Class3DOperator", "ClassReextractionOperator",
                  "Refine3DOperator",
                  "BFactorOperator", "TiltSeriesOperator", "TomogramOperator", "DenoiseOperator",
                  "SegmentationOperator")


def get_provider_info() -> dict:
    """Provider metadata read by Airflow through the `apache_airflow_provider` entry point."""
    return {
        "package-name": "airflow-provider-cryoem",
        "name": "Cryo-EM",
        "description": "Live and reprocessing cryo-EM pipelines (SPA, tomography) for Apache Airflow. Step "
                       "operators: " + ", ".join(STEP_OPERATORS) + "; SlurmCommandOperator, NewMoviesSensor, "
                       "StartNextRunOperator.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Cryo-EM",
                "external-doc-url": "https://github.com/airflow-provider-cryoem/airflow-provider-cryoem",
                "tags": ["software"],
            }
        ],
        "operators": [
            {"integration-name": "Cryo-EM", "python-modules": ["airflow_provider_cryoem.operators.movie_steps",
                                                           "airflow_provider_cryoem.operators.batch_steps",
                                                           "airflow_provider_cryoem.operators.session",
                                                           "airflow_provider_cryoem.operators.slurm"]},
        ],
        "sensors": [
            {"integration-name": "Cryo-EM", "python-modules": ["airflow_provider_cryoem.sensors.new_movies"]},
        ],
        "hooks": [
            {"integration-name": "Cryo-EM", "python-modules": ["airflow_provider_cryoem.hooks.results",
                                                           "airflow_provider_cryoem.hooks.slurm",
                                                           "airflow_provider_cryoem.hooks.slurm_rest"]},
        ],
        "triggers": [
            {"integration-name": "Cryo-EM", "python-modules": ["airflow_provider_cryoem.triggers.new_movies",
                                                           "airflow_provider_cryoem.triggers.slurm",
                                                           "airflow_provider_cryoem.triggers.slurm_rest"]},
        ],
        "connection-types": [],
    }
