"""python -m dlm_jax.flops [VOCAB] [SEQ_LEN]: the named model sizes (model.size) with their
parameter counts and training FLOPs per token at that vocabulary and sequence length (tied
embeddings; defaults 8192 and 1024). The counting is dlm_jax/core/flops.py."""
import sys

from dlm_jax import cli
from dlm_jax import errors
from dlm_jax.core import flops

USAGE = 'python -m dlm_jax.flops [VOCAB] [SEQ_LEN]'


def format_table(vocab, seq_len):
  """The size table as printed: one header, one line per named size."""
  lines = [f'vocab={vocab} seq_len={seq_len} (tied embeddings)',
           f'{"size":8s} {"d":>5s} {"layers":>6s} {"heads":>5s} {"mlp":>5s} {"N_total":>14s} '
           f'{"N_nonembed":>14s} {"train FLOPs/tok":>16s}']
  for r in flops.table(vocab, seq_len):
    lines.append(f'{r[0]:8s} {r[1]:5d} {r[2]:6d} {r[3]:5d} {r[4]:5d} {r[5]:14,d} {r[6]:14,d} '
                 f'{r[7]:16.3e}')
  return '\n'.join(lines)


@errors.cli
def main(argv=None):
  ap = cli.parser('flops', __doc__)
  ap.add_argument('numbers', nargs='*', metavar='VOCAB SEQ_LEN', help='positive integers')
  args = ap.parse_args(sys.argv[1:] if argv is None else argv).numbers
  if len(args) > 2 or not all(a.isdigit() and int(a) > 0 for a in args):
    raise errors.UsageError(f'{USAGE} takes positive integers, got {" ".join(args)}')
  vocab, seq_len = (int(a) for a in args + ['8192', '1024'][len(args):])
  print(format_table(vocab, seq_len))


if __name__ == '__main__':
  main()
