"""ST in a plain PyTorch loop: your model, your optimizer and scheduler, st_fast's controller.

    python examples/plain_pytorch.py        # a few seconds on a CPU

The data is synthetic and carries a class-wise shortcut (a bright patch at a class-specific
place, the kind of pattern an availability poison plants), so ACM rises as the network learns it and the
controller rolls back and slows the shallow layers. Swap in your own model and loaders.
"""

import torch
import torch.nn.functional as F
from torch import nn

import st_fast

torch.manual_seed(0)
n, classes = 600, 3
labels = torch.arange(n) % classes
images = torch.rand(n, 1, 16, 16) * 0.5
for k in range(classes):                                      # the shortcut
    images[labels == k, :, 4 * k:4 * k + 4, 4 * k:4 * k + 4] = 1.0
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                     batch_size=64, shuffle=True)
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(32, classes))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
ctrl = st_fast.STController(model, optimizer, probe=(images[:300], labels[:300]),
                            tau=2.4, alpha=0.5)                # units: the top-level children
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)

for epoch in range(6):
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()  # noqa: E702
    report = ctrl.end_epoch()                                   # ACM, decision, rollback
    scheduler.step()
    print(f"epoch {epoch + 1}: ACM {report.acm:.2f} {report.decision:<8} c {report.c} "
          f"multipliers {[round(m, 2) for m in report.multipliers]}")
    if report.stop:
        break
