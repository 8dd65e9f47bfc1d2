"""The built-in example run for `wdist demo`: a small CNN trained on sparse, nearly binary inputs."""

from __future__ import annotations

import os
from collections.abc import Callable

EPOCHS_SAVED = (1, 2, 5, 10, 20)


def epochs_saved(epochs: int) -> list[int]:
    """The epochs to save: those of EPOCHS_SAVED before the last, and always the last one itself."""
    return [e for e in EPOCHS_SAVED if e < epochs] + [epochs]


def train(out_dir: str, epochs: int = 20, seed: int = 0,
          on_epoch: Callable[[int, float, float], None] | None = None) -> list[str]:
    """Train deterministically; save .pt and .safetensors at epochs_saved(epochs); return the .pt paths."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed)
    n, side = 1024, 16
    # nearly binary, mostly ones: each pixel is 0 with probability 0.1, plus a little noise; then [0, 1]
    x = (torch.rand(n, 1, side, side, generator=g) > 0.1).float() + 0.05 * torch.rand(n, 1, side, side, generator=g)
    x = (x - x.min()) / (x.max() - x.min())
    zeros_top = (x[:, :, : side // 2] < 0.5).sum(dim=(1, 2, 3))
    zeros_left = (x[:, :, :, : side // 2] < 0.5).sum(dim=(1, 2, 3))
    y = (zeros_top > zeros_top.float().median()).long() * 2 + (zeros_left > zeros_left.float().median()).long()

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.3)]

    model = nn.Sequential(*block(1, 16, 1), *block(16, 32, 2), *block(32, 32, 2), *block(32, 64, 2),
                          nn.Flatten(), nn.Linear(64 * 2 * 2, 4))
    names = {0: "conv1", 3: "conv2", 6: "conv3", 9: "conv4", 13: "fc"}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    os.makedirs(out_dir, exist_ok=True)
    saved = []
    keep = set(epochs_saved(epochs))
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=g)
        total, correct = 0.0, 0
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        if on_epoch:
            on_epoch(epoch, total / n, correct / n)
        if epoch in keep:
            sd = {}
            for k, v in model.state_dict().items():
                idx_s, _, param = k.partition(".")
                i = int(idx_s)
                layer = names.get(i) or f"bn{(i - 1) // 3 + 1}"
                sd[f"{layer}.{param}"] = v.detach().clone()
            pt = os.path.join(out_dir, f"epoch{epoch}.pt")
            torch.save({"epoch": epoch, "state_dict": sd, "optimizer": opt.state_dict()}, pt)
            save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out_dir, f"epoch{epoch}.safetensors"))
            saved.append(pt)
    return saved
