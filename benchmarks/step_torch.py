"""``--compare torch``: the PyTorch twin of the JAX step (eager, channels-last).

The same network (benchmarks/torch_resnet.py), batch, loss and SGD settings as
``step_common.optimizer_config()``: torch.optim.SGD with the same learning rate, momentum,
Nesterov and L2 weight decay (added to the gradient before momentum, as optax's chain does).

    python benchmarks/train_step.py --models resnet20 --batch 128 --dtypes float32,bfloat16 \\
        --compare torch --repeats 3
"""

from __future__ import annotations

import os
import time

from benchmarks import step_common


class TorchStep:
    """PyTorch eager, channels-last: the same network, SGD step, loss and batch."""

    def __init__(self, name: str, batch: int, size: int, classes: int, dtype: str,
                 activation: str = "relu", self_attention: bool = False):
        import torch
        import torch.nn.functional as F

        from benchmarks import torch_resnet

        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        self.torch, self.F = torch, F
        net = torch_resnet.build(name, classes, activation, self_attention)
        self.net = net.to(memory_format=torch.channels_last).train()
        c = step_common.optimizer_config()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=c.learning_rate, momentum=c.momentum,
                                   weight_decay=c.weight_decay, nesterov=c.nesterov)
        data = step_common.synthetic_batch(batch, size, classes)
        image = torch.from_numpy(data["image"]).permute(0, 3, 1, 2)
        self.x = image.contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(data["label"]).long()
        self.bf16 = dtype == "bfloat16"
        t0 = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - t0

    def run(self, n: int) -> None:
        """``n`` steps (synchronous on the CPU)."""
        torch = self.torch
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.F.cross_entropy(self.net(self.x), self.y)
            loss.backward()
            self.opt.step()
