"""Small models of token ids for the word-substitution tests and benchmark (an embedding-bag
MLP, an LSTM, a self-attention layer) and the exact range of a model over every substitution
of a short sentence, by enumeration."""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from lirpac.perturbations.substitution import candidate_ids

V, D, T = 20, 5, 4


class Bag(nn.Module):
    def __init__(self, relu=True):
        super().__init__()
        self.embed, self.fc, self.out, self.relu = nn.Embedding(V, D), nn.Linear(D, 8), nn.Linear(8, 2), relu

    def forward(self, ids):
        h = self.fc(self.embed(ids))
        return self.out((F.relu(h) if self.relu else h).mean(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn, self.out = nn.Embedding(V, D), nn.LSTM(D, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, ids):
        h, _ = self.rnn(self.embed(ids))
        return self.out(h[:, -1])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.q, self.k, self.v, self.out = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, 2)

    def forward(self, ids):
        e = self.embed(ids)
        w = torch.softmax(self.q(e) @ self.k(e).transpose(1, 2) / D ** 0.5, -1)
        return self.out(F.relu(w @ self.v(e) + e).mean(1))


def exact_range(model, ids, substitutes, k):
    """min and max of the model over every sentence with at most k substitutions (one batch
    of all of them)."""
    cands = candidate_ids(ids, substitutes)
    choices = [choice for choice in itertools.product(range(cands.shape[2]), repeat=ids.shape[1])
               if sum(c > 0 for c in choice) <= k]
    pick = torch.tensor(choices).T.unsqueeze(0).expand(ids.shape[0], -1, -1)      # (B, T, N)
    sentences = cands.gather(2, pick).permute(2, 0, 1).reshape(-1, ids.shape[1])  # (N * B, T)
    outs = model(sentences).reshape(len(choices), ids.shape[0], -1)
    return outs.amin(0), outs.amax(0)


def random_substitutes(g, batch=2, most=2):
    return [[torch.randint(0, V, (int(torch.randint(0, most + 1, (1,), generator=g)),), generator=g).tolist()
             for _ in range(T)] for _ in range(batch)]
