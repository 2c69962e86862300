"""Contract checks every registered label space inherits (one-hot included).

A synthetic 10-class dataset of digit names with a ``coarse`` labelling lets every
registered space be built; a new space registered in ``labels.py`` is checked here
automatically.
"""

from __future__ import annotations

import pytest
import torch

from memdistill.data import ImageDataset
from memdistill.labels import LabelSpace, create_label_space, equal_storage_ipc, list_label_spaces


def _dataset() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    images = torch.randint(0, 256, (200, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageDataset(name="synthetic", split="train", images=images, labels=labels,
                        classes=tuple(str(d) for d in range(10)), mean=(0.5,), std=(0.3,),
                        extra_labels={"coarse": labels // 5}, extra_classes={"coarse": ("low", "high")})


@pytest.mark.parametrize("name", list_label_spaces())
class TestLabelSpaceContract:
    def space(self, name) -> LabelSpace:
        data = _dataset()
        return create_label_space(name, data.classes, dataset=data)

    def test_shape_and_record_round_trip(self, name):
        space = self.space(name)
        assert space.num_classes == 10 and space.width >= 10 and space.rows >= 10
        assert space.is_onehot == (name == "onehot")
        again = LabelSpace.from_record(space.to_record())
        assert torch.equal(again.table, space.table) and again.is_onehot == space.is_onehot

    @pytest.mark.parametrize("kind", ["bases", "images"])
    def test_new_memory_recalls_every_class_within_the_budget(self, name, kind):
        space, data = self.space(name), _dataset()
        opts = {"num_bases": 4, "downsample": 2} if kind == "bases" else {}
        mem = space.new_memory(kind, data, 2.0, "real", torch.Generator().manual_seed(0), **opts)
        assert mem.floats_stored() <= 2 * 64 * 10  # the budget of 2 images for each original class
        x, y = space.class_examples(mem)
        assert x.shape[1:] == (1, 8, 8) and torch.isfinite(x).all()
        assert sorted(set(y.tolist())) == list(range(10)) and len(y) == 10 * mem.slots
        assert equal_storage_ipc(2.0, space) <= 2.0

    def test_class_loss_is_a_differentiable_scalar(self, name):
        space = self.space(name)
        forward = space.wrap_forward(lambda params, x: x @ params[0])
        w = torch.randn(5, space.width, requires_grad=True)
        out = forward((w,), torch.randn(7, 5))
        loss = space.class_loss(out, torch.arange(7) % 10)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss) and w.grad is not None and w.grad.abs().sum() > 0
