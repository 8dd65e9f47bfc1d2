"""Regenerate the README's example outputs from real runs, so that they can never drift from the code.

Each example in README.md is a comment `<!-- example: ARGS -->` (ARGS as for `wdist`, run in a folder the
script prepares) followed by a fenced block; the block is replaced by `$ wdist ARGS` and the command's real
output at 110 columns. The files the examples name are made here: the Keras fixtures of tests/data/keras,
and a short training run written with torch (run/epoch1.pt ... run/epoch10.safetensors, pruned.pt).

    python docs/readme_examples.py          # rewrite README.md in place
    python docs/readme_examples.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"(<!-- example: (?P<args>.+?) -->\n)```\n.*?```\n", re.S)


def _files(d: Path) -> None:
    import torch
    from safetensors.torch import save_file

    for f in (ROOT / "tests" / "data" / "keras").iterdir():
        if f.suffix in (".h5", ".keras"):
            shutil.copy(f, d / f.name)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    frozen = torch.nn.Linear(4, 4)
    (d / "run").mkdir()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(256, 16)
    y = (x[:, :4] > 0).float()
    for epoch in range(1, 11):
        for _ in range(20):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
        if epoch in (1, 5, 10):
            sd = {f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()}
            sd.update({f"frozen.{k}": v.detach().clone() for k, v in frozen.state_dict().items()})
            torch.save({"epoch": epoch, "state_dict": sd}, d / "run" / f"epoch{epoch}.pt")
            save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "run" / f"epoch{epoch}.safetensors"))
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    w = sd["0.weight"]
    w[w.abs() < w.abs().quantile(0.6)] = 0  # magnitude pruning of the first layer only
    torch.save({"fc.weight": w, "fc.bias": sd["0.bias"], "head.weight": sd["2.weight"]}, d / "pruned.pt")


def _run(args: str, cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "110", "NO_COLOR": "1", "WDIST_CACHE_DIR": str(cwd / ".cache")}
    r = subprocess.run([sys.executable, "-m", "wdist", *shlex.split(args)], cwd=cwd, env=env, capture_output=True,
                       text=True)
    tail = f"$ echo $?\n{r.returncode}\n" if r.returncode else ""
    return f"$ wdist {args}\n{r.stdout}{tail}"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _files(d)
        new = EXAMPLE.sub(lambda m: m.group(1) + "```\n" + _run(m.group("args"), d) + "```\n", text)
    if "--check" in sys.argv:
        return 0 if new == text else 1
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
