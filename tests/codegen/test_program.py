"""The bound program (codegen/program.py): statements as trees, the printer, freeing."""
import torch

import lirpac
from lirpac.codegen.program import Program, from_source, free_dead, print_program, statement


def _printed(source: str) -> str:
    program = from_source(source)
    return print_program(Program(program.name, program.params, program.doc, free_dead(program.body)))


def test_statements_know_what_they_define_read_and_call():
    st = statement("_coeffs, _lb, _ub = bwd_relu(lA_x, uA_x, x_bounds, slope=0.5)")
    assert st.defines() == {"_coeffs", "_lb", "_ub"}
    assert st.reads() == {"bwd_relu", "lA_x", "uA_x", "x_bounds"}
    assert st.rule == "bwd_relu"
    comment = statement("# backward from %y")
    assert comment.tree is None and comment.comment == "backward from %y"
    header = statement("def y_pass(_rows):  # one pass")
    assert header.compound and header.comment == "one pass"


def test_coefficients_are_freed_after_their_last_read_only():
    text = _printed('''
def bound(inp):
    lA_a = f(inp)
    uA_a = lA_a
    lA_b = g(lA_a, uA_a)
    lA_b = acc(lA_b, 1)
    return h(lA_b)
''')
    lines = [line.strip() for line in text.splitlines()]
    assert lines.index("del lA_a, uA_a") == lines.index("lA_b = g(lA_a, uA_a)") + 1
    assert not any(line.startswith("del lA_b") for line in lines)    # read by the return


def test_names_a_closure_or_a_branch_reads_are_kept():
    text = _printed('''
def bound(inp):
    lA_a = f(inp)
    lA_c = f(inp)
    def later():
        return lA_a
    if inp:
        lA_d = lA_c
    x = later()
    return x
''')
    assert "del lA_a" not in text
    assert "del lA_c" in text


def test_freed_program_computes_the_same_bounds():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    net = lirpac.compile(model, torch.zeros(1, 4))
    source = net.source("crown")
    assert "del lA_" in source
    x = torch.randn(5, 4)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1))
    samples = x + 0.1 * (2 * torch.rand(2000, 1, 4) - 1)
    with torch.no_grad():
        out = model(samples)
    assert (out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()


def test_printed_code_names_the_model_source_of_its_statements():
    net = lirpac.compile(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                             torch.nn.Linear(8, 3)).eval(), torch.zeros(1, 4))
    source = net.source("crown")
    assert "# linear: 0 (Linear)" in source and "# relu: 1 (ReLU)" in source
