"""Sweeps: named sets of runs (loading), the local process pool that trains them (executors) and
the table of their results (collection). The command is `python -m dlm_jax.sweep`
(dlm_jax/sweep.py); sweep files import `Sweep` (and `fmt_num`) from here or from there.
"""
from dlm_jax.study.sweep.collection import (COLUMNS, RESULTS, collect, dataframe, loss_of,
                                            read_csv, shipped_table, write_csv)
from dlm_jax.study.sweep.executors import Children, command, run_local, worker_env
from dlm_jax.study.sweep.loading import (Sweep, base_config_path, default_root, fmt_num,
                                         load_sweep, overrides)

__all__ = ['COLUMNS', 'RESULTS', 'Children', 'Sweep', 'base_config_path', 'collect', 'command',
           'dataframe', 'default_root', 'fmt_num', 'load_sweep', 'loss_of', 'overrides',
           'read_csv', 'run_local', 'shipped_table', 'worker_env', 'write_csv']
