"""The special token ids every tokenizer shares, in a leaf that imports nothing, so the model, the
noise process and the objectives know [MASK] and PAD without reaching up to data/ (file paths,
tokenizer loading); data/tokenizers.py builds its vocabularies around these."""

PAD, BOS, EOS, MASK = 0, 1, 2, 3
SPECIALS = ['<pad>', '<bos>', '<eos>', '<mask>']  # their token strings, in id order
NUM_SPECIAL = len(SPECIALS)  # ids below this are specials; text ids start here
