"""Rebuild the shipped tokenizer dlm_jax/data/corpus/bpe8192.json from the embedded training split."""
from dlm_jax.data import corpus, tokenizers

if __name__ == '__main__':
  train, _ = corpus.split_documents(corpus.load_documents('embedded'), 0.04)
  print(tokenizers.train_bpe([d.text for d in train], 8192))
