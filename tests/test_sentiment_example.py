"""examples/sentiment.py: its data keeps labels under substitution, and a tiny run trains,
verifies and reports the k = 1, 2, 3 table for both models."""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("vaderSentiment")
_spec = importlib.util.spec_from_file_location(
    "sentiment_example", Path(__file__).resolve().parent.parent / "examples" / "sentiment.py")
sentiment = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sentiment)


def test_substitutes_share_the_sign_of_their_word():
    lexicon = sentiment.read_lexicon()
    assert lexicon["good"] > 0 > lexicon["horrible"]
    (ids, labels), _, vocab, synonyms = sentiment.build_data(200, 10, 2.0, 4)
    assert ids.shape == (200, sentiment.LENGTH) and set(labels.tolist()) == {0, 1}
    for word, row in zip(vocab, synonyms.tolist()):
        for s in row:
            if s >= 0:
                assert (lexicon[vocab[s]] > 0) == (lexicon[word] > 0), (word, vocab[s])


@pytest.mark.parametrize("model", ["transformer", pytest.param("lstm", marks=pytest.mark.slow)])
def test_a_tiny_run_reports_the_table(model, capsys):
    table = sentiment.main(["--model", model, "--train", "40", "--test", "8", "--epochs", "1",
                            "--warmup", "0", "--ramp", "1", "--batch-size", "20", "--no-progress",
                            "--method", "crown-ibp" if model == "lstm" else "ibp"])
    assert sorted(table) == [1, 2, 3]
    for clean, per_method, best in table.values():
        assert 0.0 <= max(per_method.values()) <= best <= clean <= 1.0
    assert "k   clean" in capsys.readouterr().out
