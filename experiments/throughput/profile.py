"""Where the time goes in one MLP run of the dynarch runner: pyinstrument over `dynarch.train.train`.

.venv/bin/python experiments/throughput/profile.py      # writes profile.txt beside this file (--out DIR: there)
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/argtypes.py

import argtypes  # noqa: E402
from bench import write_idx  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=argtypes.out_dir, default=HERE, help="folder for profile.txt")
    args = p.parse_args()
    from pyinstrument import Profiler

    from dynarch.compose import compose_run
    from dynarch.train import train

    tmp = Path(tempfile.mkdtemp(prefix="dynarch-profile-"))
    write_idx(tmp, 48000)
    run = compose_run(["data=idx", f"data.path={tmp}", "data.val_fraction=0", "trainer.epochs=4", "trainer.verbose=0"])
    import tensorflow  # noqa: F401  (import time is not the runner's)

    profiler = Profiler(interval=0.001)
    profiler.start()
    metrics = train(run, tmp / "run")
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (args.out / "profile.txt").write_text(text)
    print(text[:6000])
    print(
        f"samples/s {metrics['samples_per_s']:,.0f}, train {metrics['train_time_s']} s, wall {metrics['wall_time_s']} s"
    )


if __name__ == "__main__":
    main()
