"""The 2D navigation run of notebook 09: ``scripts/train_metarl.py`` with its default
``--experiment navigation`` (this name is kept for the commands already published).

    nice -n 10 python scripts/train_navigation.py --preset paper --time-limit 2700
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("train_metarl.py")), run_name="__main__")
