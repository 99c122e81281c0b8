"""Every XLA program one survey worker compiles for one shard (`deconvjax.survey.run_shard`).

The cutouts are those of ``survey.py`` (LSST-like 64x64 fields of 1 to 4 galaxies in g, r,
i; ``--unique`` simulated, each listed ``--n-cutouts / --unique`` times), fitted as
``survey.py`` fits them (`FitTask`, ``threads=1``), in this process with the persistent
cache off, so that every program is compiled here. Programs are counted from JAX's own
records: one ``backend_compile`` event per XLA compilation, and ``jax_log_compiles``'s
"Compiling <name> with global shapes and types ..." lines for their names and shapes.
The fit's figures do not depend on ``--max-iter`` (it is an argument of the compiled
loop), so a short fit counts the same programs.

The last line printed is a JSON object: ``programs`` (distinct compiles), ``by_name``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class _Compiles(logging.Handler):
    """Collects jax_log_compiles' "Compiling <name> with global shapes and types <shapes>"."""

    pattern = re.compile(r"Compiling (\S+) with global shapes and types (.*?)\. Argument mapping", re.S)

    def __init__(self, where: tuple[str, ...] = ()):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []
        self.where = where
        self.stacks: dict[str, str] = {}
        self.durations: list[float] = []

    def emit(self, record):
        m = self.pattern.search(record.getMessage())
        if m:
            self.records.append((m.group(1), m.group(2)))
            if m.group(1) in self.where and m.group(1) not in self.stacks:
                import traceback

                frames = [f for f in traceback.extract_stack() if "deconvjax" in f.filename]
                self.stacks[m.group(1)] = "".join(traceback.format_list(frames[-4:]))


def count_programs(manifest, task, shard_size: int, index: int = 0, where: tuple[str, ...] = (), out=None):
    """Run shard ``index`` of ``manifest`` in this process and return ``(record, compiles,
    events)``: the shard's record, the (name, shapes) of every program compiled, and the
    number of XLA compilations JAX reported."""
    import jax

    from deconvjax.survey.manifest import manifest_length
    from deconvjax.survey.run import run_shard

    events = [0]
    handler = _Compiles(where)

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events[0] += 1
            # The compile just finished is the last one logged on this thread's program
            # (run_shard compiles one program at a time but for fit_batch's two at once).
            handler.durations.append(float(duration))

    jax.monitoring.register_event_duration_secs_listener(listen)
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    n = manifest_length(manifest)
    start, stop = index * shard_size, min((index + 1) * shard_size, n)
    out = Path(out or tempfile.mkdtemp(prefix="survey_programs_out_"))
    try:
        record = run_shard(index, start, stop, str(manifest), str(out), task, 0, None)
    finally:
        jax.config.update("jax_log_compiles", False)
    logging.getLogger("jax").removeHandler(handler)
    return record, handler.records, events[0], handler.stacks, handler.durations


def main(argv=None):
    import survey as bench
    import vs_scarlet2 as vs

    from deconvjax.survey import FitTask
    from deconvjax.survey.run import choose_model_psf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-cutouts", type=int, default=256, help="the shard's cutouts")
    p.add_argument("--unique", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--stamp-size", type=int, default=27)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--shard-index", type=int, default=0, help="which shard of shard size --n-cutouts / 2 ... "
                   "(0: the first); the manifest then holds twice --n-cutouts")
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None, help="folder for the shard's catalog (default: a temporary one)")
    p.add_argument("--where", default="", help="comma-separated program names whose first call site to print")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    work = Path(a.work or tempfile.mkdtemp(prefix="survey_programs_"))
    fields = vs.simulate(a.unique, a.seed, (64, 64), 1, 4)
    repeat = -(-a.n_cutouts // a.unique) * (2 if a.shard_index else 1)
    manifest = bench.write_cutouts(work / "cutouts", fields, repeat=repeat)
    sigma = choose_model_psf(manifest)
    task = FitTask(max_iter=a.max_iter, stamp_size=a.stamp_size, batch=a.batch, threads=1,
                   model_psf_sigma=sigma, bands=tuple(vs.BANDS))
    t = time.perf_counter()
    record, compiles, events, stacks, durations = count_programs(manifest, task, a.n_cutouts, a.shard_index,
                                                      tuple(w for w in a.where.split(",") if w), a.out)
    wall = time.perf_counter() - t
    by_name = collections.Counter(name for name, _ in compiles)
    seconds = collections.Counter()
    if len(durations) == len(compiles):  # paired in order (approximately: two may overlap)
        for (name, _), d in zip(compiles, durations):
            seconds[name] += d
    print(f"{'program':40s} {'compiles':>8s} {'seconds':>8s}  first shapes")
    for name, k in by_name.most_common():
        shapes = next(s for nm, s in compiles if nm == name)
        print(f"{name:40s} {k:8d} {seconds[name]:8.2f}  {shapes[:100]}")
    for name, shapes in sorted(set(compiles)):
        print(f"  {name}: {shapes[:300]}")
    for name, st in stacks.items():
        print(f"{name} first compiled from:\n{st}")
    print(f"shard of {record['cutouts']} cutouts, {record['rows']} rows: {events} XLA compilations "
          f"({len(compiles)} logged), {record['compile_seconds']:.1f} s compiling, {wall:.1f} s in all")
    print(json.dumps({"programs": events, "logged": len(compiles), "by_name": dict(by_name),
                      "seconds_by_name": {k: round(v, 2) for k, v in seconds.items()},
                      "compile_seconds": record["compile_seconds"], "wall_seconds": wall,
                      "loadavg": list(os.getloadavg())}))


if __name__ == "__main__":
    main()
