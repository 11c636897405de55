"""--mode eval: the likelihood estimators on validation windows and the zero-shot tasks, for the
latest checkpoint of a run (EMA parameters if it kept them), written to eval/<eval.name>.json."""
import json
import math
import os
import time

import numpy as np

from dlm_jax import config as config_lib
from dlm_jax import sections
from dlm_jax.core import model as model_lib
from dlm_jax.core import noise as noise_lib
from dlm_jax.core import objectives
from dlm_jax.data import benchmarks
from dlm_jax.data import pipeline
from dlm_jax.data import tokenizers
from dlm_jax.data.tokenizers import PAD
from dlm_jax.errors import TrainingError, os_errors_as
from dlm_jax.infer import likelihood
from dlm_jax.infer import zeroshot
from dlm_jax.run import checkpoint
from dlm_jax.run import loop
from dlm_jax.run import rundir


def estimators(cfg):
  """eval.estimators resolved; auto leaves out the masked-noise estimators under uniform / hybrid
  noise (their NELBO is validation's)."""
  names = [x.strip() for x in cfg.eval.estimators.split(',') if x.strip()]
  masked = noise_lib.masked(cfg.diffusion)
  out = []
  for n in names:
    for e in (objectives.of(cfg).estimators if n == 'auto' else (n,)):
      if e not in out and (masked or n != 'auto' or e not in sections.MASKED_ONLY):
        out.append(e)
  return out

def task_estimator(cfg):
  """The zero-shot option scorer: eval.task_estimator, or the objective's default."""
  if cfg.eval.task_estimator != 'auto':
    return cfg.eval.task_estimator
  return objectives.of(cfg).task_estimator


def stage_line(k, n, what, summary, seconds, total_s):
  """`eval 2/5 | chain | 3.2100 nats/token, 128 rows | 95.1 s (total 130.4 s)`: one finished
  stage of --mode eval, whose estimators and tasks may each run for minutes."""
  return f'eval {k}/{n} | {what} | {summary} | {seconds:.1f} s (total {total_s:.1f} s)'


def likelihood_table(scorer, names, rows_RxL, bytes_per_token=None, done=None):
  """{estimator: nats/token (and bits/byte, NELBO standard error, rows/s)} on full windows;
  done(estimator, a one-line summary, seconds) after each."""
  out = {}
  for est in names:
    t0 = time.time()
    r = scorer(est, rows_RxL, rows_RxL != PAD)
    dt = time.time() - t0
    tok = int(r['tokens'].sum())
    res = dict(nats_per_token=likelihood.per_token(r['logp'], r['tokens']), tokens=tok,
               rows=int(len(rows_RxL)), seconds=round(dt, 3),
               rows_per_s=round(len(rows_RxL) / dt, 3), estimand=likelihood.ESTIMANDS[est])
    if est == 'nelbo':
      res['stderr'] = float(np.sqrt(np.sum(r['se'] ** 2)) / tok)
      res['samples'] = scorer.K
    if bytes_per_token:
      res['bits_per_byte'] = res['nats_per_token'] / bytes_per_token / math.log(2)
    out[est] = res
    if done:
      done(est, f'{res["nats_per_token"]:.4f} nats/token, {res["rows"]} rows', dt)
  return out

@os_errors_as(TrainingError)
def run(cfg, workdir):
  """--mode eval: the estimators on the first eval.likelihood_rows validation windows (of the
  run's data, or of eval.corpus) and the zero-shot tasks, for the latest checkpoint of `workdir`
  (EMA parameters if it kept them). Writes eval/<name>.json (per-item predictions under
  eval/<name>/) and returns the dict."""
  e = cfg.eval
  if not os.path.isdir(workdir):
    raise TrainingError(f'--workdir {workdir}: no such run directory')
  rundir.check_writable(rundir.path(workdir, 'eval', f'{e.name}.json'),
                        rundir.path(workdir, 'eval', e.name) + '/')
  tasks = [zeroshot.resolve_task(t.strip(), e.tasks_dir) for t in e.tasks.split(',') if t.strip()]
  items = {name: benchmarks.read(path, e.task_limit) for name, path in tasks}  # fail early
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  cfg = config_lib.resolve(cfg, tok.vocab_size, training=False,
                           vocab_real=tok.vocab_real)
  params, step = checkpoint.load_params(workdir, cfg, what=f'--workdir {workdir}')
  model = model_lib.Transformer(cfg.model)
  scorer = likelihood.Scorer.from_config(model, params, cfg, tok)
  t0 = time.time()
  n_stages = len(estimators(cfg)) * bool(e.likelihood_rows) + len(tasks)
  finished = []

  def done(what, summary, seconds):  # batch logs (SLURM): a line per stage, as training's rows
    finished.append(what)
    if loop.batch_log():
      print(stage_line(len(finished), n_stages, what, summary, seconds, time.time() - t0),
            flush=True)
  out = dict(run=os.path.abspath(workdir), step=int(step), objective=cfg.objective,
             corpus=e.corpus or cfg.data.corpus, date=time.strftime('%Y-%m-%d'), likelihood={},
             tasks={})
  if e.likelihood_rows:
    rows, bpt = pipeline.validation_windows(cfg.data, e.corpus, e.likelihood_rows,
                                            cfg.model.vocab_size)
    out['likelihood'] = likelihood_table(scorer, estimators(cfg), rows, bpt, done)
  est = task_estimator(cfg)
  pred_dir = os.path.join(workdir, 'eval', e.name)
  for name, path in tasks:
    t1 = time.time()
    res = zeroshot.score_items(scorer, est, items[name], tok, cfg.data.seq_len)
    preds = res.pop('predictions')
    res['seconds'] = round(time.time() - t1, 3)
    out['tasks'][name] = res
    done(f'task {name}', f'acc {res["acc"]:.4f}, {res["items"]} items', res['seconds'])
    os.makedirs(pred_dir, exist_ok=True)
    with open(os.path.join(pred_dir, f'{name}.jsonl'), 'w', encoding='utf-8') as f:
      for p in preds:
        f.write(json.dumps(p) + '\n')
  out['seconds'] = round(time.time() - t0, 3)
  rundir.atomic_json(rundir.path(workdir, 'eval', f'{e.name}.json'), out)
  return out

def format_table(res):
  lines = [f'{res["run"]} (step {res["step"]}, {res["objective"]})']
  if res['likelihood']:
    lines.append(f'  {"estimator":14s} {"nats/token":>10s} {"bits/byte":>9s} {"rows/s":>8s}')
    for k, v in res['likelihood'].items():
      se = f' +- {v["stderr"]:.4f}' if 'stderr' in v else ''
      bpb = f'{v["bits_per_byte"]:9.4f}' if 'bits_per_byte' in v else f'{"":9s}'
      lines.append(f'  {k:14s} {v["nats_per_token"]:10.4f} {bpb} {v["rows_per_s"]:8.2f}{se}')
  if res['tasks']:
    lines.append(f'  {"task":14s} {"items":>6s} {"acc":>7s} {"acc_norm":>8s} {"chance":>7s} '
                 f'{"ppl":>9s}  estimator')
    for k, v in res['tasks'].items():
      norm = f'{v["acc_norm"]:8.4f}' if 'acc_norm' in v else f'{"":8s}'
      chance = f'{v["chance"]:7.4f}' if 'chance' in v else f'{"":7s}'
      ppl = f'{v["ppl"]:9.1f}' if 'ppl' in v else f'{"":9s}'
      lines.append(f'  {k:14s} {v["items"]:6d} {v["acc"]:7.4f} {norm} {chance} {ppl}  '
                   f'{v["estimator"]}')
  return '\n'.join(lines)
