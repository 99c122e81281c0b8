"""Survey scale: fit (and, through other tasks, sample) millions of cutouts, shard by
shard, on a Dask cluster or in one process, compiling each program once.

`run_survey` cuts a manifest of cutouts (`deconvjax.survey.manifest`) into shards, runs a
task (`FitTask`: the MAP fit; `SampleTask`: posterior samples with a diffusion prior) on
each shard on a worker and writes one Parquet file per shard (and the task's other files,
e.g. `SampleTask`'s images); `read_catalog` and `catalog_dataset` read them back as one
table, `catalog_quality` lists the cutouts not to be trusted as they stand (chi2 far above
the noise, failed or unconverged fits), `read_images_of` the posterior images of
`SampleTask` rows.
"""

from .manifest import SurveyInputError as SurveyInputError
from .manifest import build_manifest as build_manifest
from .manifest import load_cutout as load_cutout
from .manifest import manifest_length as manifest_length
from .manifest import read_manifest_rows as read_manifest_rows
from .manifest import write_manifest as write_manifest
from .run import SurveyError as SurveyError
from .run import catalog_dataset as catalog_dataset
from .run import catalog_quality as catalog_quality
from .run import choose_model_psf as choose_model_psf
from .run import read_catalog as read_catalog
from .run import run_shard as run_shard
from .run import run_survey as run_survey
from .sample import SampleTask as SampleTask
from .sample import read_images_of as read_images_of
from .task import SOURCE_BUCKETS as SOURCE_BUCKETS
from .task import AbstractSurveyTask as AbstractSurveyTask
from .task import Bucket as Bucket
from .task import Cutout as Cutout
from .task import FitTask as FitTask
from .task import make_buckets as make_buckets
from .task import padded_count as padded_count
