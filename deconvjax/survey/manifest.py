"""The survey's input: a manifest table naming every cutout's files and source centres,
read lazily, a range of rows at a time.

A manifest is a Parquet file, one row per cutout, with the columns

- ``cutout_id`` (string): unique name of the cutout, carried to every output row;
- either ``file`` (string): a deconvjax observation file (what `deconvjax simulate`
  writes: images, noise, mask, PSF and WCS in one FITS file, read by
  `deconvjax.io.read_arrays`),
- or ``image``, ``psf`` and one of ``variance`` / ``weight`` / ``rms`` (list of strings,
  one per band; the noise as `deconvjax fit`'s --variance / --weights / --rms takes it):
  real FITS cutouts, read by `deconvjax.io.read_images` (``psf`` may hold one file for all
  bands), with optionally ``mask`` (list of strings: bad-pixel masks, nonzero marks a bad
  pixel, as `deconvjax fit --mask`) and ``hdu`` (string: the HDU, index or EXTNAME, of the
  images in the ``image`` files, as `deconvjax fit --hdu`);
- ``y``, ``x`` (list of float64, one per source): source centres in pixels of the cutout
  (0-based, ``y`` the row), as `deconvjax.fit.init_batch` takes them;
- ``ny``, ``nx`` (int): the cutout's shape, which is checked against its files and
  groups the cutouts into shape buckets without reading them;
- ``bands`` (string, optional): comma-separated band names of real cutouts.

Relative paths are relative to the manifest's folder. `build_manifest` writes one for a
`deconvjax simulate` folder; `write_manifest` one from columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Columns every manifest has.
REQUIRED = ("cutout_id", "y", "x", "ny", "nx")
#: The file columns of real (per-band FITS) cutouts.
REAL_FILES = ("image", "psf", "variance")
#: The noise columns of real cutouts (one of them per manifest), and the optional mask.
NOISE_FILES = ("variance", "weight", "rms")
LIST_COLUMNS = ("image", "psf", *NOISE_FILES, "mask")
#: The default name of a manifest in a cutout folder.
MANIFEST_NAME = "survey_manifest.parquet"


def _real_columns(names) -> bool:
    """Whether ``names`` hold the columns of real cutouts: image, psf and one noise column."""
    return "image" in names and "psf" in names and sum(n in names for n in NOISE_FILES) == 1


class SurveyInputError(ValueError):
    """A manifest or cutout that cannot be fitted as given (missing file, wrong shape,
    bad column), with the cutout and what was expected."""


def write_manifest(path, columns: dict) -> Path:
    """Write a manifest (atomically) from ``columns``, a mapping of column name to a
    sequence with one entry per cutout (see the module's docstring for the columns).
    Returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._atomic import atomic_write

    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise SurveyInputError(f"columns: the manifest needs {list(REQUIRED)}; missing {missing}")
    if "file" not in columns and not _real_columns(columns):
        raise SurveyInputError("columns: give 'file' (deconvjax observation files) or image, psf and one of "
                               f"{list(NOISE_FILES)}")
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise SurveyInputError(f"columns: every column needs one entry per cutout, got lengths {lengths}")
    ids = [str(c) for c in columns["cutout_id"]]
    if len(set(ids)) != len(ids):
        raise SurveyInputError("cutout_id: the ids must be unique")
    arrays = {"cutout_id": pa.array(ids, pa.string())}
    for name in ("y", "x"):
        arrays[name] = pa.array([[float(v) for v in np.atleast_1d(p)] for p in columns[name]], pa.list_(pa.float64()))
    for name in ("ny", "nx"):
        arrays[name] = pa.array([int(v) for v in columns[name]], pa.int32())
    for name, values in columns.items():
        if name in arrays:
            continue
        if name in LIST_COLUMNS:
            arrays[name] = pa.array([[str(f) for f in np.atleast_1d(v)] for v in values], pa.list_(pa.string()))
        else:
            arrays[name] = pa.array([str(v) for v in values], pa.string())
    table = pa.table(arrays)
    path = Path(path)
    # Row groups of 1024 cutouts: a worker reading its shard reads only the groups it spans.
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=1024))
    return path


def build_manifest(folder, path=None) -> Path:
    """The manifest of a `deconvjax simulate` output folder (its ``manifest.json`` and
    truth tables: true centres as the source positions), written to ``path`` (default
    ``folder/survey_manifest.parquet``). Paired space views are left out."""
    from ..io import read_truth

    folder = Path(folder)
    index = folder / "manifest.json"
    if not index.exists():
        raise SurveyInputError(f"folder: {folder} has no manifest.json; is it a `deconvjax simulate` output?")
    meta = json.loads(index.read_text())
    if meta.get("paired"):
        files = [f for f in meta["files"] if not Path(f["field"]).stem.count("_") > 1]
    else:
        files = list(meta["files"])
    cols: dict = {k: [] for k in ("cutout_id", "file", "y", "x", "ny", "nx")}
    size = int(meta["size"])
    for f in files:
        truth = read_truth(folder / f["truth"])
        cols["cutout_id"].append(Path(f["field"]).stem)
        cols["file"].append(f["field"])
        cols["y"].append(np.asarray(truth["y"], float))
        cols["x"].append(np.asarray(truth["x"], float))
        cols["ny"].append(size)
        cols["nx"].append(size)
    return write_manifest(folder / MANIFEST_NAME if path is None else path, cols)


def manifest_path(cutouts) -> Path:
    """The manifest of ``cutouts``: a manifest file itself, or a folder holding
    ``survey_manifest.parquet`` (built first for a `deconvjax simulate` folder without one)."""
    cutouts = Path(cutouts)
    if cutouts.is_file():
        return cutouts
    if not cutouts.is_dir():
        raise SurveyInputError(f"cutouts: {cutouts} is neither a manifest file nor a folder")
    path = cutouts / MANIFEST_NAME
    if not path.exists():
        build_manifest(cutouts, path)
    return path


def manifest_length(path) -> int:
    """The number of cutouts in a manifest (read from its footer only)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as err:  # pyarrow raises several kinds for a non-Parquet file
        raise SurveyInputError(f"manifest: {path} is not a readable Parquet table ({err})") from None
    return int(meta.num_rows)


def read_manifest_rows(path, start: int, stop: int) -> list[dict]:
    """Rows ``start`` to ``stop`` of a manifest as dicts, reading only the row groups
    they span."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    names = set(f.schema_arrow.names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise SurveyInputError(f"manifest: {path} lacks the columns {missing}")
    if "file" not in names and not _real_columns(names):
        raise SurveyInputError(f"manifest: {path} needs a 'file' column or image, psf and one of {list(NOISE_FILES)}")
    groups, first, offset = [], None, 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return []
    table = f.read_row_groups(groups)
    table = table.slice(start - first, stop - start)
    return pa.Table.to_pylist(table)


def resolve(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def load_cutout(row: dict, root: Path):
    """Read one manifest row's cutout: ``(ObservationData, positions (source, 2))``.
    Raises `SurveyInputError` naming the cutout for a missing file or a shape that
    disagrees with the manifest."""
    from ..io import read_arrays, read_images

    cid = row["cutout_id"]
    if row.get("file"):
        files = {"file": [row["file"]]}
    else:
        noise = [k for k in NOISE_FILES if row.get(k)]
        if len(noise) != 1:
            raise SurveyInputError(f"cutout {cid!r}: give one of {list(NOISE_FILES)}, got {noise or 'none'}")
        files = {k: list(row[k] or []) for k in ("image", "psf", noise[0], "mask") if row.get(k)}
    for column, names in files.items():
        for name in names:
            if not resolve(root, name).exists():
                raise SurveyInputError(f"cutout {cid!r}: {column} file {resolve(root, name)} does not exist")
    try:
        if "file" in files:
            data = read_arrays(resolve(root, files["file"][0]))
        else:
            spec = lambda k: [str(resolve(root, n)) for n in files[k]]  # noqa: E731
            psf = spec("psf")
            bands = tuple(row["bands"].split(",")) if row.get("bands") else None
            hdu = str(row.get("hdu") or "").strip() or None
            if hdu is not None and hdu.lstrip("+-").isdigit():
                hdu = int(hdu)
            images = spec("image") if hdu is None else [(p, hdu) for p in spec("image")]
            data = read_images(images, psf=psf if len(psf) > 1 else psf[0], bands=bands,
                               mask=spec("mask") if "mask" in files else None, **{noise[0]: spec(noise[0])})
    except SurveyInputError:
        raise
    except (OSError, ValueError) as err:
        raise SurveyInputError(f"cutout {cid!r}: cannot read its files ({err})") from None
    expected = (int(row["ny"]), int(row["nx"]))
    if tuple(data.shape) != expected:
        raise SurveyInputError(
            f"cutout {cid!r}: the manifest says its shape is {expected} (ny, nx), its images are {tuple(data.shape)}"
        )
    y, x = np.asarray(row["y"], float), np.asarray(row["x"], float)
    if y.shape != x.shape or y.size == 0:
        raise SurveyInputError(f"cutout {cid!r}: y and x must list the same, non-zero number of source centres")
    return data, np.stack([y, x], axis=1)
