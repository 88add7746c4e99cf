"""`data-pipeline`: source -> ingest/validate/quarantine -> features -> Feast materialize, drift check."""

from kfp import dsl

from pipelines.k8s import RUN_CONTEXT_DEFAULT, PipelineRun
from pipelines.steps import SYNTHETIC_DEFAULT, data_steps

NAME = "data-pipeline"


@dsl.pipeline(
    name=NAME,
    description="Listening events to validated data, point-in-time features, Feast online store and a drift report.",
)
def data_pipeline(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    synthetic: dict = SYNTHETIC_DEFAULT,
    as_of: str = "",
    chunk_rows: int = 65_536,
    lookback_days: int = 28,
    half_life_days: float = 14.0,
    feast_project: str = "aitasks",
    online_store: str = "sqlite",
    psi_threshold: float = 0.2,
    ks_pvalue_threshold: float = 0.01,
) -> None:
    """The data pipeline. Empty ``events_uri``/``catalog_uri``: synthetic data from the ``synthetic`` settings."""
    data_steps(
        PipelineRun(NAME, run_context),
        events_uri=events_uri,
        catalog_uri=catalog_uri,
        synthetic=synthetic,
        as_of=as_of,
        chunk_rows=chunk_rows,
        lookback_days=lookback_days,
        half_life_days=half_life_days,
        feast_project=feast_project,
        online_store=online_store,
        psi_threshold=psi_threshold,
        ks_pvalue_threshold=ks_pvalue_threshold,
    )
