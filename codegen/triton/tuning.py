"""Autotuning of the row-tiled kernels' tiles (ROWS rows by BLOCK columns a program):
``triton.autotune`` over tiles around the heuristic ``tile`` (codegen/triton/__init__.py).

The best tile depends on the row length n (the key) and on how many rows there are: each
launcher keeps one autotuner per power-of-two bucket of the row count (the heuristic's own
rows choice), created on first use. On a GPU the candidates are the heuristic's tile and its
neighbours (half and quarter the columns, a half to twice the elements a program), timed once
per (kernel, bucket, n, flags, dtypes). Under the interpreter only the heuristic's tile is
left after pruning, so nothing is timed (triton's autotuner runs a single config directly) and
the tests stay fast while going through the same launch path.

Kernels tuned so must tolerate any candidate's grid: their per-row partial results are laid
out for the smallest BLOCK a launch may get (``max_blocks``) and zeroed (``reset_to_zero``
between timed runs), so a tile with fewer column blocks leaves zeros the sums ignore.
"""
from __future__ import annotations

import triton

from lirpac.codegen.triton import interpreting, tile

_MIN_BLOCK, _MAX_BLOCK, _MAX_ELEMENTS = 16, 1024, 8192


def _power_of_two(k: int) -> int:
    return 1 << max(k - 1, 0).bit_length()


def _warps(rows: int, block: int) -> int:
    return 8 if rows * block > 2048 else 4


def all_configs() -> list:
    """Every tile a prune may pick: powers of two, BLOCK in [16, 1024], ROWS >= 2, at most
    8192 elements a program."""
    out = []
    block = _MIN_BLOCK
    while block <= _MAX_BLOCK:
        rows = 2
        while rows * block <= _MAX_ELEMENTS:
            out.append(triton.Config({"ROWS": rows, "BLOCK": block}, num_warps=_warps(rows, block)))
            rows *= 2
        block *= 2
    return out


def candidates(total_rows: int, n: int) -> list[tuple[int, int]]:
    """(ROWS, BLOCK) tiles to time for ``total_rows`` rows of ``n`` columns: the heuristic's
    first; only it under the interpreter."""
    rows, block = tile(total_rows, n)
    if interpreting():
        return [(rows, block)]
    found = [(rows, block)]
    row_cap = max(2, _power_of_two(total_rows))
    for b in (block, block // 2, block // 4):
        if b < _MIN_BLOCK:
            continue
        for elements in (rows * block // 2, rows * block, rows * block * 2):
            r = max(2, min(elements // b, row_cap))
            if r * b <= _MAX_ELEMENTS and (r, b) not in found:
                found.append((r, b))
    return found


def max_blocks(total_rows: int, n: int) -> int:
    """Column blocks of the narrowest candidate: the partial results' row stride."""
    return triton.cdiv(n, min(b for _, b in candidates(total_rows, n)))


def _prune(configs, nargs, **kwargs):
    wanted = candidates(nargs["total_rows"], nargs["n"])
    by_tile = {(c.kwargs["ROWS"], c.kwargs["BLOCK"]): c for c in configs}
    return [by_tile[t] for t in wanted if t in by_tile]


_tuners: dict = {}


def tuned(kernel, total_rows: int, key: list[str], reset_to_zero: list[str]):
    """The autotuned ``kernel`` for launches of ``total_rows`` rows (one autotuner per
    kernel and power-of-two bucket of rows); launch it with ``tuned_grid`` and without ROWS,
    BLOCK or num_warps."""
    bucket = min(_power_of_two(max(total_rows, 1)), _MAX_ELEMENTS // _MIN_BLOCK)
    found = _tuners.get((kernel, bucket))
    if found is None:
        found = _tuners[(kernel, bucket)] = triton.autotune(
            configs=all_configs(), key=key, prune_configs_by={"early_config_prune": _prune},
            reset_to_zero=reset_to_zero)(kernel)
    return found


def tuned_grid(total_rows: int, n: int):
    """The grid of a tuned launch: (row tiles, column blocks) of the tile it gets."""
    return lambda meta: (triton.cdiv(total_rows, meta["ROWS"]), triton.cdiv(n, meta["BLOCK"]))
