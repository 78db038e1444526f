"""The IR dump is stable: golden files (refresh with LIRPAC_UPDATE_GOLDEN=1, never silently)."""
import os
import pathlib

import pytest
import torch

import lirpac
from models import ARCHS

GOLDEN = pathlib.Path(__file__).parent / "golden"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_ir_dump_matches_golden(arch):
    cls, shape = ARCHS[arch]
    torch.manual_seed(0)
    net = lirpac.compile(cls().eval(), torch.zeros(1, *shape))
    text = str(net.graph) + "\n"
    path = GOLDEN / f"{arch}.txt"
    if os.environ.get("LIRPAC_UPDATE_GOLDEN") == "1" or not path.exists() and os.environ.get("CI") != "true":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"IR dump of {arch} changed; if intended, rerun with LIRPAC_UPDATE_GOLDEN=1"


def test_dot_export_lists_every_node():
    cls, shape = ARCHS["mlp"]
    net = lirpac.compile(cls().eval(), torch.zeros(1, *shape))
    dot = net.graph.to_dot()
    assert dot.startswith("digraph")
    for node in net.graph.nodes:
        assert f'"{node.name}"' in dot


def test_verifier_accepts_frontend_graphs():
    from lirpac.ir.verify import verify_graph
    for arch, (cls, shape) in ARCHS.items():
        net = lirpac.compile(cls().eval(), torch.zeros(1, *shape))
        verify_graph(net.graph)


def test_ir_evaluates_like_the_model():
    from lirpac.ir.interpret import evaluate
    from lirpac.ir.verify import verify_graph
    for arch, (cls, shape) in ARCHS.items():
        model = cls().eval()
        x = torch.randn(3, *shape)
        net = lirpac.compile(model, x[:1])
        verify_graph(net.graph, x)
        torch.testing.assert_close(evaluate(net.graph, x), model(x), rtol=1e-5, atol=1e-5)
