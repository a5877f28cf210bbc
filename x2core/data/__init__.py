"""The data wing: the LMDB store and packing, datasets, collation, stream mixing,
transforms, text processing, tokenizers, MLM masking and video decoding."""
