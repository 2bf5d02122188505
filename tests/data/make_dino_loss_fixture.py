"""Writes dino_loss_lightly.json: lightly 1.6.0's DINOLoss on fixed tensors (an independent
implementation of DINO's loss and centring), the oracle of tests/test_adapt.py.

lightly is not a stage1 dependency (it requires pytorch_lightning and hydra-core); to rerun:
``pip download lightly==1.6.0 --no-deps``, unzip the wheel to DIR, then
``PYTHONPATH=DIR python tests/data/make_dino_loss_fixture.py``.
"""

import json
from pathlib import Path

import torch
from lightly.loss.dino_loss import DINOLoss

g = torch.Generator().manual_seed(0)
B, K, V = 3, 5, 4  # batch, prototypes, student views (2 global + 2 local)
teacher = [torch.randn(B, K, generator=g) * 3 for _ in range(2)]
student = [torch.randn(B, K, generator=g) * 3 for _ in range(V)]
teacher2 = [torch.randn(B, K, generator=g) * 3 for _ in range(2)]
student2 = [torch.randn(B, K, generator=g) * 3 for _ in range(V)]
loss = DINOLoss(output_dim=K, teacher_temp=0.05, student_temp=0.1, center_momentum=0.9)
l1 = loss(teacher, student, teacher_temp=0.05)
c1 = loss.center.flatten().tolist()
l2 = loss(teacher2, student2, teacher_temp=0.07)  # now with a non-zero centre
c2 = loss.center.flatten().tolist()
out = {
    "source": "lightly 1.6.0 lightly.loss.dino_loss.DINOLoss",
    "student_temp": 0.1,
    "center_momentum": 0.9,
    "teacher_temps": [0.05, 0.07],
    "teacher": [[t.tolist() for t in teacher], [t.tolist() for t in teacher2]],
    "student": [[s.tolist() for s in student], [s.tolist() for s in student2]],
    "loss": [float(l1), float(l2)],
    "center": [c1, c2],
}
Path(__file__).with_name("dino_loss_lightly.json").write_text(json.dumps(out, indent=1) + "\n")
