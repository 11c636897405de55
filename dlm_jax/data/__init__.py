"""Data: the embedded corpus, tokenizers and grain pipelines."""
