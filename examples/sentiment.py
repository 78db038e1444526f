"""Sentiment classifiers (an LSTM or a Transformer encoder) trained certifiably against word
substitutions and verified at k = 1, 2, 3 substituted words.

    python examples/sentiment.py                       # the LSTM, a few minutes on 2 cores
    python examples/sentiment.py --model transformer   # under a minute
    python examples/sentiment.py --method crown-ibp --k 3

The model reads token ids through an nn.Embedding; lirpac compiles it on the ids
(``lirpac.compile(model, ids)``) and bounds it over ``lirpac.WordSubstitution``: each word may
become one of its substitutes, at most k per sentence, and the bounds use the substitutes'
embedding rows themselves (ir/ops/embedding.py). Training uses examples/certified_training.py's
loop (lirpac.training.robust_loss, IBP or CROWN-IBP), the set's moves scaled from 0 to 1 over
the ramp (``--eps`` is that scale) with k = ``--k``; the report certifies the test sentences at
k = 1, 2, 3 with each of ``--verify-methods`` and their best. Word rows start small (std 0.1),
and the Transformer has no LayerNorm and a longer schedule: interval bounds through softmax
attention widen with the range of the scores, and with LayerNorm or unit-size rows its IBP
training collapsed to a constant prediction.

Data, all from the vaderSentiment wheel (``pip install vaderSentiment``: its
vaderSentiment/vader_lexicon.txt, VADER's lexicon of about 7,500 tokens whose valence, from -4
to 4, is the mean of ten human ratings; nothing is downloaded at run time):

* words: the lexicon's lower-case alphabetic entries with |valence| >= ``--min-valence``;
* sentences, built here from templates ("the movie was X", "what a X film", "the plot was not
  X", ...) around those words and a few neutral ones: a sentence's label is the sign that its
  lexicon words share, flipped by "not" in the negated templates;
* substitutes, from the lexicon too: a word's family, the entries that share its first five
  letters and the sign of its valence (abandon: abandoned, abandoning, abandonment, ...), at
  most ``--substitutes`` of them, nearest in valence first. They keep every sentence's label.

Neutral words have no substitutes. Sentences are left-padded to 8 tokens (id 0).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

import lirpac
from lirpac import training

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certified_training import add_arguments, train, tqdm  # noqa: E402

LENGTH = 8
NOUNS = ["movie", "film", "plot", "story", "acting", "cast", "ending", "music", "script", "show"]
# (template, negated): X is a lexicon word, N a noun
TEMPLATES = [("the N was X", False), ("the N is really X", False), ("what a X N", False),
             ("i found the N X", False), ("X and X", False), ("the N and the N were X", False),
             ("a X N with a X N", False), ("X X and X", False), ("the X N was X and X", False),
             ("the N was not X", True), ("not a X N", True), ("the N is not very X", True)]
NEUTRAL = ["<pad>", "the", "a", "was", "is", "really", "what", "i", "found", "and", "were", "with",
           "not", "very"] + NOUNS


def read_lexicon() -> dict[str, float]:
    """VADER's lexicon as {word: mean valence}: lower-case alphabetic entries only (the file
    also rates emoticons and abbreviations)."""
    try:
        text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        sys.exit("the sentences and substitutes come from VADER's lexicon in the vaderSentiment "
                 "wheel: pip install -e \".[examples]\" (or pip install vaderSentiment)")
    out = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].isalpha() and fields[0].islower():
            out[fields[0]] = float(fields[1])
    return out


def word_families(lexicon: dict[str, float], words: list[str], most: int) -> dict[str, list[str]]:
    """Each word's substitutes: lexicon entries sharing its first five letters and its valence's
    sign (|valence| >= 1), nearest in valence first, at most ``most``."""
    by_stem: dict[str, list[str]] = {}
    for w, v in lexicon.items():
        if len(w) >= 5 and abs(v) >= 1.0:
            by_stem.setdefault(w[:5], []).append(w)
    out = {}
    for w in words:
        v = lexicon[w]
        family = [u for u in by_stem.get(w[:5], []) if u != w and (lexicon[u] > 0) == (v > 0)]
        out[w] = sorted(family, key=lambda u: (abs(lexicon[u] - v), u))[:most]
    return out


def build_data(n_train: int, n_test: int, min_valence: float, most: int, seed: int = 0):
    """(train (ids, labels), test (ids, labels), vocabulary, synonyms (V, most) -1 padded)."""
    lexicon = read_lexicon()
    words = sorted(w for w, v in lexicon.items() if abs(v) >= min_valence and w not in NEUTRAL)
    families = word_families(lexicon, words, most)
    vocab = NEUTRAL + words + sorted({u for f in families.values() for u in f} - set(words) - set(NEUTRAL))
    index = {w: i for i, w in enumerate(vocab)}
    synonyms = torch.full((len(vocab), max(most, 1)), -1, dtype=torch.long)
    for w, family in families.items():
        for j, u in enumerate(family):
            synonyms[index[w], j] = index[u]
    polar = {1: [w for w in words if lexicon[w] > 0], 0: [w for w in words if lexicon[w] < 0]}
    rng = random.Random(seed)

    def sentence():
        template, negated = rng.choice(TEMPLATES)
        label = rng.randrange(2)
        pool = polar[1 - label if negated else label]
        tokens = [rng.choice(pool) if t == "X" else rng.choice(NOUNS) if t == "N" else t
                  for t in template.split()]
        return [0] * (LENGTH - len(tokens)) + [index[t] for t in tokens], label

    data = [sentence() for _ in range(n_train + n_test)]
    ids = torch.tensor([d[0] for d in data])
    labels = torch.tensor([d[1] for d in data])
    return ((ids[:n_train], labels[:n_train]), (ids[n_train:], labels[n_train:]), vocab, synonyms)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int, dim: int = 32, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])             # (left padding: the last step is the last word)


class TransformerClassifier(nn.Module):
    """One encoder layer (2-head self-attention, then a ReLU feed-forward block, each with a
    residual) over word + learned position embeddings, mean-pooled. No LayerNorm: its division
    by the spread makes interval bounds far looser (Shi et al. 2020 drop it for the same
    reason)."""

    def __init__(self, vocab: int, dim: int = 32, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, ids):
        h = self.embed(ids) + self.position
        h = h + self.attention(h, h, h, need_weights=False)[0]
        h = h + self.feed_forward(h)
        return self.head(h.mean(1))


MODELS = {"lstm": LSTMClassifier, "transformer": TransformerClassifier}
TRANSFORMER_SCHEDULE = {"warmup": 3, "ramp": 6, "epochs": 12, "lr": 2e-3}


def small_embeddings(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Word rows of std 0.1 instead of nn.Embedding's 1: a substitution's move, and the range
    of attention scores it spans, scale with them (IBP through softmax widens with the scores'
    range)."""
    nn.init.normal_(model.embed.weight, std=std)
    return model


@torch.no_grad()
def verified_accuracy(net, model, test_set, synonyms, ks, methods, batch: int = 100, progress=True):
    """{k: (clean accuracy, {method: verified accuracy}, best of the methods)} on ``test_set``."""
    ids, labels = test_set
    logits = torch.cat([model(ids[i:i + batch]) for i in range(0, len(ids), batch)])
    clean = (logits.argmax(1) == labels).float().mean().item()
    out = {}
    steps = [(k, i) for k in ks for i in range(0, len(ids), batch)]
    bar = tqdm(steps, desc="verifying", leave=False) if tqdm is not None and progress else steps
    counts = {k: ({m: 0 for m in methods}, [0]) for k in ks}
    for k, i in bar:
        x, y = ids[i:i + batch], labels[i:i + batch]
        ws = lirpac.WordSubstitution(synonyms=synonyms, k=k)
        best = torch.zeros(len(y), dtype=torch.bool)
        for m in methods:
            ok = training.certified(net, x, y, ws, m, logits=logits[i:i + batch])
            counts[k][0][m] += ok.sum().item()
            best |= ok
        counts[k][1][0] += best.sum().item()
    for k in ks:
        per_method, best = counts[k]
        out[k] = (clean, {m: c / len(ids) for m, c in per_method.items()}, best[0] / len(ids))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="lstm")
    p.add_argument("--k", type=int, default=2, help="substituted words per sentence in training")
    p.add_argument("--train", type=int, default=3000, help="training sentences")
    p.add_argument("--test", type=int, default=300, help="test sentences")
    p.add_argument("--min-valence", type=float, default=2.5,
                   help="lexicon words with |valence| at least this (VADER's -4..4 scale)")
    p.add_argument("--substitutes", type=int, default=4, help="substitutes per word, at most")
    add_arguments(p, eps=1.0, epochs=8, batch_size=50, lr=5e-3, warmup=1, ramp=4, method="ibp",
                  eps_help="the scale of the substitutions' moves the ramp reaches (1: the set)")
    p.set_defaults(verify_methods="ibp,crown-ibp")
    # the Transformer learns slower and its attention bounds widen faster: a longer schedule
    if p.parse_known_args(argv)[0].model == "transformer":
        p.set_defaults(**TRANSFORMER_SCHEDULE)
    args = p.parse_args(argv)
    if args.k < 1 or not 0.0 < args.eps <= 1.0:
        p.error("--k must be >= 1 and --eps in (0, 1]")

    torch.manual_seed(args.seed)
    train_set, test_set, vocab, synonyms = build_data(args.train, args.test, args.min_valence,
                                                      args.substitutes, args.seed)
    with_family = int((synonyms[:, 0] >= 0).sum())
    print(f"vocabulary {len(vocab)} words ({with_family} with substitutes), {len(train_set[0])} "
          f"training and {len(test_set[0])} test sentences; e.g. "
          f"'{' '.join(vocab[t] for t in test_set[0][0].tolist() if t)}' "
          f"({'positive' if test_set[1][0] else 'negative'})")
    model = small_embeddings(MODELS[args.model](len(vocab)))
    make_set = lambda eps: lirpac.WordSubstitution(synonyms=synonyms, k=args.k, scale=min(1.0, eps))  # noqa: E731
    model = train(args, model, train_set, test_set, make_set=make_set, final_report=False)
    model.eval()
    net = lirpac.compile(model, test_set[0][:2])
    methods = [m.strip() for m in args.verify_methods.split(",") if m.strip()]
    start = time.time()
    table = verified_accuracy(net, model, test_set, synonyms, (1, 2, 3), methods,
                              progress=not args.no_progress)
    print(f"\n{args.model}, trained with {args.method} at k={args.k}; {len(test_set[0])} test sentences "
          f"(verified in {time.time() - start:.0f} s)")
    print(f"{'k':>3} {'clean':>7} " + " ".join(f"{m:>10}" for m in methods) + f" {'best':>7}")
    for k, (clean, per_method, best) in table.items():
        print(f"{k:>3} {clean:7.3f} " + " ".join(f"{per_method[m]:10.3f}" for m in methods) + f" {best:7.3f}")
    return table


if __name__ == "__main__":
    main()
