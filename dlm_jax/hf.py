"""Hugging Face checkpoints in and out (the conversion: dlm_jax/interop/convert.py).

  python -m dlm_jax.hf import ~/models/SmolLM2-135M --workdir runs/smollm
      a local model directory (config.json, *.safetensors or a sharded index, tokenizer.json) of
      LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM -> a run directory
      (step 0) that init_from, --mode eval, --mode sample and lmeval accept. Reads with numpy only
      (no torch).
  python -m dlm_jax.hf export runs/x exported/x [--dtype bfloat16]
      any run (AR, MDM, dual) -> a directory AutoModelForCausalLM.from_pretrained loads.
"""
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.interop import convert


def parse(argv):
  ap = cli.parser('hf', __doc__)
  sub = ap.add_subparsers(dest='cmd', required=True)
  i = sub.add_parser('import', help='a HF model directory -> a run directory')
  i.add_argument('hf_dir')
  i.add_argument('--workdir', required=True, help='the run directory to create')
  i.add_argument('--param_dtype', choices=tuple(convert.DTYPES), default='float32',
                 help='dtype the parameters are stored (and trained) in')
  i.add_argument('--seq_len', type=int, default=0, help="data.seq_len of the run (0: min(2048, "
                 "the checkpoint's max_position_embeddings))")
  e = sub.add_parser('export', help='a run -> a transformers model directory')
  e.add_argument('run')
  e.add_argument('out')
  e.add_argument('--dtype', choices=tuple(convert.DTYPES), default='float32',
                 help='dtype of the written tensors')
  return ap.parse_args(sys.argv[1:] if argv is None else argv)


@errors.cli
def main(argv=None):
  a = parse(argv)
  if a.cmd == 'import':
    s = convert.import_checkpoint(a.hf_dir, a.workdir, a.param_dtype, a.seq_len)
    print(f'imported {s["architecture"]} from {a.hf_dir}: N_total={s["N_total"]:,}, vocabulary '
          f'{s["vocab"]["checkpoint_rows"]:,} -> {s["vocab"]["dlm_rows"]:,} rows, in '
          f'{s["seconds"]} s -> {a.workdir}')
  else:
    s = convert.export_run(a.run, a.out, a.dtype)
    print(f'exported {a.run} (step {s["step"]}, {s["objective"]}) as '
          f'{s["architecture"]}: {s["tensors"]} tensors -> {a.out}')


if __name__ == '__main__':
  main()
