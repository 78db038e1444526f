"""docs/ops.md is the registry's table, regenerated whenever an op changes."""
from pathlib import Path

from lirpac import opdoc

DOC = Path(__file__).resolve().parent.parent / "docs" / "ops.md"


def test_ops_table_is_up_to_date():
    assert DOC.exists() and DOC.read_text() == opdoc.render(), (
        "docs/ops.md is stale: regenerate it with `python -m lirpac.opdoc --out docs/ops.md`")


def test_table_lists_every_op_and_modes():
    text = opdoc.render()
    assert "| `sigmoid` | `sigmoid.default`, `sigmoid_.default` | yes | yes | yes |" in text
    assert "| `hardtanh.default` | `ir/ops/activations.py` |" in text
