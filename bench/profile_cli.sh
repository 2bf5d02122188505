#!/usr/bin/env bash
# Where the wall time of a warm `stage1 sweep` goes (device profiling helper; not part of CI):
# the import + device-init floor, then the 72-config CLI twice (cold, warm) with cProfile on the
# warm run. Usage: bash bench/profile_cli.sh OUTDIR
set -euo pipefail
out=${1:-/tmp/profile_cli}
mkdir -p "$out"
python3 - <<'PY'
import sys, time; sys.path[:0] = ["bench", "."]
from pathlib import Path
from sweep import make_data, write_bench_cache
write_bench_cache(Path("/tmp/bench_cli.h5"), make_data(262144, 32768, 768))
PY
python3 -c "import time; t=time.perf_counter(); import stage1.sweep.run, heads.sweep, heads.train, calibrate.thresholds, jax; jax.devices(); print(f'import + device init: {time.perf_counter()-t:.2f} s')"
args=(sweep --cache /tmp/bench_cli.h5 --out /tmp/out_cli --grid lr=1e-4:1e-2:log8 --grid weight_decay=0,1e-4,1e-2 --grid seed=0,1,2 --set optim.epochs=10 --set optim.batch_size=512 --no-progress --compile-cache /tmp/cc_cli)
/usr/bin/time -f "cold wall %e s" python3 -m stage1 "${args[@]}" | grep -E "rows in|^time:"
/usr/bin/time -f "warm wall %e s" python3 -m stage1 "${args[@]}" | grep -E "rows in|^time:"
python3 -m cProfile -o "$out/prof.out" -m stage1 "${args[@]}" | grep -E "^time:"
python3 -c "import pstats,sys; p=pstats.Stats(sys.argv[1]); p.sort_stats('cumulative').print_stats(40); p.sort_stats('tottime').print_stats(15)" "$out/prof.out" | grep -v "^$" | cut -c1-150
