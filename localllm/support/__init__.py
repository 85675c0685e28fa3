"""Test and documentation support, not used at run time: the tokenizer corpus, the
feature-matrix generator and the fuzzers."""
