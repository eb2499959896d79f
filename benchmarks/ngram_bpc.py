"""Unigram and bigram BPC on the validation split, as reference points.

    python benchmarks/ngram_bpc.py

Counts come from the training split with add-one smoothing; the score is
the mean over every validation character.
"""

import json
import math
from collections import Counter

from neurodeploy import data


def main() -> None:
    text, raw = data.read_corpus(None, "char")
    split = len(text) - int(len(text) * 0.1)
    train, val = text[:split], text[split:]
    alphabet = sorted(set(text))

    unigram = Counter(train)
    total = sum(unigram.values()) + len(alphabet)
    uni_bits = -sum(math.log2((unigram[c] + 1) / total) for c in val)

    pairs = Counter(zip(train, train[1:]))
    bi_bits = 0.0
    for previous, current in zip(val, val[1:]):
        bi_bits -= math.log2((pairs[(previous, current)] + 1)
                             / (unigram[previous] + len(alphabet)))

    print(json.dumps({"unigram_bpc": uni_bits / len(val),
                      "bigram_bpc": bi_bits / (len(val) - 1)}))


if __name__ == "__main__":
    main()
