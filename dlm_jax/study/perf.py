"""The measurements behind `python -m dlm_jax.bench` (no test asserts a time; results go to
BENCHMARKS.md): a train step's compile time, step time, tokens/s and MFU; each likelihood
estimator's throughput; sampling speed and generative perplexity per sampler setting; the wall
time of a scaling-law fit. What each measures and how: the command's --help (dlm_jax/bench.py).
"""
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlm_jax.core import model as model_lib
from dlm_jax.core import sampling
from dlm_jax.core import sharding
from dlm_jax.data import pipeline
from dlm_jax.infer import likelihood
from dlm_jax.infer import sample
from dlm_jax.run import memory
from dlm_jax.run import rundir
from dlm_jax.run import samples as run_samples
from dlm_jax.run import setup as setup_lib
from dlm_jax.run import step as step_lib
from dlm_jax.study import fitting
from dlm_jax.study import scaling

# Dense bf16 peak FLOP/s per device (vendor figures) for MFU; unknown devices report none.
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12,
              'TPU v5 lite': 197e12, 'TPU v5p': 459e12}


def peak_flops(device):
  kind = getattr(device, 'device_kind', '')
  for k, v in PEAK_FLOPS.items():
    if k.lower() in kind.lower():
      return v
  return None


def matmul_peak(dtype='float32', n=2048, reps=3, seconds=1.0):
  """Sustained FLOP/s of n x n matmuls in `dtype` on the default device: the best of `reps`
  blocks of back-to-back matmuls lasting ~`seconds` each. The in-process peak MFU is measured
  against when the hardware's peak is unknown (CPU); a single matmul's best time (tens of ms)
  catches bursts and read 287-358 GFLOP/s on the 2-core box, sustained blocks vary far less."""
  dt = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype]
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), dt) for i in range(2))
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  t = time.perf_counter()
  f(a, b).block_until_ready()
  k = max(1, int(seconds / (time.perf_counter() - t)))
  best = float('inf')
  for _ in range(reps):
    t = time.perf_counter()
    outs = [f(a, b) for _ in range(k)]
    jax.block_until_ready(outs)
    best = min(best, (time.perf_counter() - t) / k)
  return 2 * n ** 3 / best


def _cost_flops(compiled):
  """FLOPs of one call of a compiled function by XLA's cost analysis (None if unavailable)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float(ca['flops']) if ca and 'flops' in ca else None


def _peak_memory():
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  return stats.get('peak_bytes_in_use')


def bench_step(cfg, steps, peak_tflops=0.0, measure_peak=False):
  setup = setup_lib.build(cfg)
  cfg, mesh = setup.cfg, setup.mesh
  tx, _, state_sh, step_fn = step_lib.prepare(setup)
  t0 = time.time()
  compiled, need = memory.preflight(setup, tx, state_sh, step_fn)  # compile only; fits or refused
  compile_s = time.time() - t0
  state = jax.block_until_ready(
      jax.jit(lambda: step_lib.init_state(setup, tx), out_shardings=state_sh)())
  it = setup_lib.train_iterator(setup)
  batches = [sharding.global_batch(next(it), mesh) for _ in range(4)]
  xla_flops = _cost_flops(compiled)
  state, m = compiled(state, batches[0])
  jax.block_until_ready(m)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, m = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  dt = float(np.median(times))
  tokens = cfg.train.batch_size * cfg.data.seq_len
  flops_s = tokens * setup.counts['flops_per_token'] / dt
  if peak_tflops:
    peak, peak_source = peak_tflops * 1e12, 'given'
  elif measure_peak:
    peak, peak_source = matmul_peak(cfg.model.dtype), 'matmul'
  else:
    peak, peak_source = peak_flops(jax.devices()[0]), 'vendor'
  mem = _peak_memory()
  return dict(
      device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform,
      devices=jax.device_count(), processes=jax.process_count(), mesh=dict(mesh.shape),
      objective=cfg.objective, d_model=cfg.model.d_model, num_layers=cfg.model.num_layers,
      N_total=setup.counts['N_total'], batch_size=cfg.train.batch_size,
      seq_len=cfg.data.seq_len, grad_accum=cfg.train.grad_accum, dtype=cfg.model.dtype,
      compile_s=round(compile_s, 2), step_s_median=dt, step_s_p90=float(np.percentile(times, 90)),
      tokens_per_s=tokens / dt, model_flops_per_s=flops_s,
      flops_per_token=setup.counts['flops_per_token'],
      xla_flops_per_token=xla_flops / tokens if xla_flops else None,
      peak_flops_per_s=peak, peak_source=peak_source if peak else None,
      mfu=flops_s / (peak * jax.device_count()) if peak else None,
      peak_memory_bytes=mem, step_bytes_per_device=need['total'],
      param_bytes_per_device=sharding.bytes_per_device(state.params),
      loss=float(m['loss']), date=time.strftime('%Y-%m-%d'))


def bench_eval(cfg, rows, names):
  """Throughput of each estimator on real validation windows (random weights: the cost does not
  depend on them). A first identical call per estimator compiles; the second is timed."""
  setup = setup_lib.build(cfg)
  cfg = setup.cfg
  _, params = model_lib.init_params(cfg.model, jax.random.PRNGKey(0), cfg.data.seq_len)
  e = cfg.eval
  sc = likelihood.Scorer.from_config(setup.model, params, cfg, setup.tokenizer)
  x, _ = pipeline.validation_windows(cfg.data, '', rows, cfg.model.vocab_size)
  out = []
  for est in names:
    sc(est, x, x != 0)  # compiles every chunk shape the timed call uses
    t = time.perf_counter()
    sc(est, x, x != 0)
    dt = time.perf_counter() - t
    out.append(dict(bench='eval', estimator=est, device=jax.devices()[0].device_kind,
                    d_model=cfg.model.d_model, num_layers=cfg.model.num_layers,
                    N_total=setup.counts['N_total'], seq_len=cfg.data.seq_len, rows=int(len(x)),
                    chunk=e.chunk, nelbo_samples=e.nelbo_samples if est == 'nelbo' else None,
                    seconds=round(dt, 3), seqs_per_s=round(len(x) / dt, 3),
                    date=time.strftime('%Y-%m-%d')))
  return out


def bench_sample(runs, scorer_dir, length, steps_list, num, strategy, nocache, on_row=None):
  """Tokens/s and generative perplexity per sampler setting, one dict each; on_row(row) as each
  is measured (the command prints and appends it: a long L=1024 sweep keeps what it finished)."""
  scorer = sample.GenerativeScorer(scorer_dir) if scorer_dir else None
  out = []
  for mode, run in runs:
    rcfg, tok, model, params, step = rundir.load_run(run)
    sampler = sampling.Sampler.from_config(model, params, rcfg)
    base = sampling.Settings(mode=mode, length=length, temperature=1.0, strategy=strategy,
                           stop_at_eos=False)
    if mode == 'ar':
      settings = [base] + ([dataclasses.replace(base, kv_cache=False)] if nocache else [])
    else:
      settings = [dataclasses.replace(base, steps=length if t == 'L' else int(t))
                  for t in steps_list]
    for st in settings:
      prompts = [[]] * num
      sampler.generate(jax.random.PRNGKey(0), prompts, st)  # compiles
      res = sampler.generate(jax.random.PRNGKey(1), prompts, st)
      gens = res['tokens']
      row = dict(bench='sample', mode=mode, run=os.path.abspath(run), step=int(step),
                 device=jax.devices()[0].device_kind, d_model=rcfg.model.d_model,
                 num_layers=rcfg.model.num_layers, length=length, num=num,
                 steps=st.steps if mode == 'mdm' else None,
                 kv_cache=st.kv_cache if mode == 'ar' else None, strategy=st.strategy,
                 passes=res['passes'], seconds=round(res['seconds'], 3),
                 tokens_per_s=round(num * length / res['seconds'], 2),
                 entropy=round(float(np.mean([run_samples.unigram_entropy(g) for g in gens])), 4),
                 date=time.strftime('%Y-%m-%d'))
      if scorer is not None:
        nll, n = scorer.score(prompts, gens, tok)
        row.update(gen_ppl=round(float(np.exp(np.sum(nll) / np.sum(n))), 3),
                   scorer=scorer.run_dir)
      if on_row is not None:
        on_row(row)
      out.append(row)
  return out


def train_config(cfg, size, seq, batch, objective, dtype):
  """The config (default: configs/default.py) with the `bench train` overrides."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  if size:
    cfg.model.size = size
  if seq:
    cfg.data.seq_len = seq
  if batch:
    cfg.train.batch_size = batch
  if objective:
    cfg.objective = objective
  if dtype:
    cfg.model.dtype = {'bf16': 'bfloat16', 'f32': 'float32'}.get(dtype, dtype)
  return cfg


def format_train(r):
  """The `bench train` result as a table for people."""
  gib = f'{r["peak_memory_bytes"] / 2**30:.2f} GiB' if r['peak_memory_bytes'] else 'n/a'
  mfu = f'{100 * r["mfu"]:.1f}% of {r["peak_flops_per_s"] / 1e12:.3g} TFLOP/s ' \
        f'({r["peak_source"]})' if r['mfu'] else 'n/a'
  rows = [('device', f'{r["device"]} x {r["devices"]} ({r["platform"]})'),
          ('model', f'{r["objective"]} d{r["d_model"]} l{r["num_layers"]}, '
                    f'N_total {r["N_total"]:,}, {r["dtype"]}'),
          ('batch x seq', f'{r["batch_size"]} x {r["seq_len"]}'),
          ('compile', f'{r["compile_s"]:.1f} s'),
          ('step (median)', f'{r["step_s_median"] * 1e3:.1f} ms (p90 {r["step_s_p90"] * 1e3:.1f})'),
          ('tokens/s', f'{r["tokens_per_s"]:,.0f}'),
          ('model FLOP/s', f'{r["model_flops_per_s"] / 1e9:,.1f} GFLOP/s'),
          ('MFU', mfu), ('peak memory', gib),
          ('step memory', f'{r["step_bytes_per_device"] / 2**30:.2f} GiB per device (XLA)')]
  return '\n'.join(f'  {k:14s} {v}' for k, v in rows)


def bench_fit(law, runs, bootstrap):
  """Seconds for the fit alone (profile intervals included where the law has them) and for the
  fit with `bootstrap` resamples, and how many of them failed."""
  profile = fitting.LAWS[law].profiled
  t0 = time.perf_counter()
  scaling.fit(law, runs, profile=profile)
  t1 = time.perf_counter()
  out = scaling.fit(law, runs, bootstrap=bootstrap, profile=profile)
  t2 = time.perf_counter()
  return dict(bench='fit', law=law, runs=len(runs['loss']), fit_s=round(t1 - t0, 2),
              bootstrap=bootstrap, with_bootstrap_s=round(t2 - t1, 2),
              failed=out['bootstrap']['failed'] if bootstrap else 0,
              device=f'{os.cpu_count()}-core CPU')

