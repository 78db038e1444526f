"""Where the VNN-COMP 2021 benchmarks are, if anywhere: $LIRPAC_VNNCOMP, then
/work/shared/vnncomp2021, then <repo>/../shared/vnncomp2021. Tests using them skip otherwise."""
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def vnncomp_root() -> pathlib.Path | None:
    candidates = [os.environ.get("LIRPAC_VNNCOMP"), "/work/shared/vnncomp2021",
                  REPO.parent / "shared" / "vnncomp2021"]
    for path in candidates:
        if path and pathlib.Path(path).is_dir():
            return pathlib.Path(path)
    return None


VNNCOMP = vnncomp_root()
